#!/bin/bash
# sagecal-selfcheck: SAGECal calibrates a tiny MeasurementSet in this image.
#
# The kit (/usr/share/astrostack/sagecal-selfcheck, made at build time with
# python3-casacore) holds an empty 10-station MS tracking 3C196, the 3C196 sky
# model and cluster file of SAGECal's test data, and known gains. On a copy of
# the MS: `sagecal -a 1 -p gains` simulates the sky corrupted by those gains
# into DATA, then `sagecal` calibrates DATA. That needs the whole runtime:
# libraries, casacore's measures data (opening an MS looks up the telescope in
# the Observatories table), and a tile size that fits the cluster file.
# Exit 0 when no interval's residual grows, every final residual is a tenth of
# the uncalibrated one or less, and the solutions of every interval were
# written; else 1, with the logs.
#   docker run --rm astrostack/sagecal sagecal-selfcheck
set -euo pipefail

KIT=${SAGECAL_SELFCHECK_KIT:-/usr/share/astrostack/sagecal-selfcheck}
TILE=5        # the kit's MS has 10 timeslots: 2 solution intervals
STATIONS=10

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -a "$KIT/tiny.MS" "$work/"
cd "$work"
model=(-s "$KIT/3c196.sky.txt" -c "$KIT/3c196.sky.txt.cluster" -t "$TILE" -F 1)

fail() {
  echo "sagecal-selfcheck: FAILED: $*" >&2
  for log in simulate.log calibrate.log; do
    [ -f "$log" ] && { echo "--- $log (last 30 lines)" >&2; tail -n 30 "$log" >&2; }
  done
  exit 1
}

sagecal -d tiny.MS "${model[@]}" -a 1 -p "$KIT/gains.solutions" -O DATA >simulate.log 2>&1 \
  || fail "simulation (sagecal -a 1) exited $?"
sagecal -d tiny.MS "${model[@]}" -n 2 -e 4 -g 2 -l 10 -m 7 -x 10 -j 5 -I DATA -O CORRECTED_DATA \
  -p solved.solutions >calibrate.log 2>&1 || fail "calibration (sagecal) exited $?"

# "Timeslot: 5 Residual: initial=0.65,final=0.0018, Time spent=0 minutes". The
# first interval starts from unit gains; later ones from the previous solution.
summary=$(awk -F'[=,]' '/Residual: initial=/ { n++; if (n == 1) first = $2; if ($4 > $2) worse++;
                                               if ($4 > max) max = $4; printf "%s -> %s; ", $2, $4 }
                        END { printf "\n%d %d %d\n", n, worse + 0, (n > 0 && max * 10 < first) }' calibrate.log)
residuals=$(sed -n 1p <<<"$summary")
read -r intervals worse dropped <<<"$(sed -n 2p <<<"$summary")"
(( intervals == 2 )) || fail "expected 2 solution intervals in the calibration log, found $intervals"
(( worse == 0 )) || fail "the residual grew in $worse interval(s): $residuals"
(( dropped == 1 )) || fail "the residual did not drop tenfold from the uncalibrated one: $residuals"
rows=$(grep -vc '^#' solved.solutions || true)
(( rows == 1 + 2 * 8 * STATIONS )) || fail "solved.solutions has $rows rows, not $((1 + 2 * 8 * STATIONS))"
echo "sagecal-selfcheck: ok: residual (initial -> final) per solution interval: $residuals"
