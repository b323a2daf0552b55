#!/bin/bash
# The main job (README command 1), on a fresh Debian 12 machine as root: set
# up, start the local cloud (a real OpenStack on this machine; the first start
# installs it), build the MPI image, bring up examples/local.yaml (3 hosts,
# 12 nodes) exactly as on a real cloud, run an MPI job across every node, show
# the status, tear it down, and print the time of each phase.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
SPEC=${1:-examples/local.yaml}

declare -a PHASES=()
phase() {  # phase NAME CMD...: run and time one step
  local name=$1 start end
  shift
  echo "==> $name"
  start=$(date +%s%N)
  "$@"
  end=$(date +%s%N)
  local tenths=$(( (end - start) / 100000000 ))
  PHASES+=("$(printf '%-28s %6d.%d s' "$name" $((tenths / 10)) $((tenths % 10)))")
}

phase "set-up (packages, venv)" bash scripts/setup.sh
AS=.venv/bin/astrostack
NAME=$("$AS" spec show "$SPEC" --field name)
phase "local cloud start" "$AS" local start
phase "MPI image" "$AS" image build mpi-base
cleanup() { "$AS" down "$NAME" --yes >/dev/null 2>&1 || true; }
trap cleanup EXIT
phase "up $NAME" "$AS" up "$SPEC"
phase "MPI job on every node" "$AS" exec "$NAME" --mpi -- /usr/local/bin/mpi_smoke
phase "status" "$AS" status "$NAME"
phase "down" "$AS" down "$NAME" --yes
trap - EXIT

echo
echo "phase times:"
printf '  %s\n' "${PHASES[@]}"
