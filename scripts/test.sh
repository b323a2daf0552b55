#!/bin/bash
# The test command (README command 2, and what .ci/run calls), on a fresh
# Debian 12 machine as root: set everything up (Debian packages, .venv), start
# the local cloud (the first start installs a real OpenStack from PyPI and
# builds the VM image) while checking that the built wheel works outside the
# checkout and running lint and unit tests, then run the functional tests.
# The functional tests deploy real clusters on the local cloud: Heat, Nova
# servers that are container-VMs running cloud-init, Neutron's data plane, a
# real Swarm and Open MPI.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# A cut-off rule a killed test run left behind (tests/functional/conftest.py,
# CUTOFF_COMMENT) would fail the start's check of the VMs' way to the APIs.
# (No such rule is the usual case: grep's exit 1 must not end the script.)
{ iptables -w 10 -S INPUT 2>/dev/null || true; } | { grep -e '--comment astrostack-test-cutoff' || true; } |
  sed 's/^-A //' |
  while read -r rule; do echo "removing a test's cut-off rule left behind: $rule"; eval iptables -w 10 -D "$rule"; done
# The wheel check, lint and unit tests need no cloud: they run while the local
# cloud starts (a first start mostly waits on pip, apt and schema migrations),
# and what they printed is shown once it is up (their ~95 s, hidden inside a
# first start's ~6 min; a warm start takes seconds and hides little).
checks_log=$(mktemp /tmp/astrostack-checks.XXXXXX)
{ bash scripts/check_wheel.sh && .venv/bin/tox -e lint,unit -- "$@"; } >"$checks_log" 2>&1 &
checks=$!
stop_checks() { pkill -TERM -P "$checks" 2>/dev/null || true; kill "$checks" 2>/dev/null || true; }
trap 'stop_checks; rm -f "$checks_log"' EXIT
.venv/bin/astrostack local start
checks_status=0
wait "$checks" || checks_status=$?
cat "$checks_log"
rm -f "$checks_log"
trap - EXIT
if [ "$checks_status" -ne 0 ]; then
  echo "test: the wheel check, lint or unit tests failed (exit $checks_status): no functional tests" >&2
  exit "$checks_status"
fi
# Functional tests must not skip for want of the local cloud here: they fail instead.
export ASTROSTACK_REQUIRE_LOCAL_CLOUD=1
exec .venv/bin/tox -e functional -- "$@"
