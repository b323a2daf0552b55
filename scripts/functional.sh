#!/bin/bash
# The functional tests (tox -e functional): first every test that shares the
# local cloud with others, ASTROSTACK_TEST_WORKERS at a time (default 1; 2 runs
# them side by side with pytest-xdist, a module whose tests share a cluster on
# one worker: on 2 cores that overloaded Neutron and tests timed out),
# then the `exclusive` tests (they stop Heat's API or Keystone, or cut the VMs
# off from Heat) one at a time with nothing else running. Extra arguments go
# to both runs. Exit status: the first failing run's; 5 ("no tests ran") only
# when neither run had a test to run.
set -Euo pipefail
cd "$(dirname "$0")/.."
workers=${ASTROSTACK_TEST_WORKERS:-1}
side_by_side=()
if [ "$workers" -gt 1 ]; then side_by_side=(-n "$workers" --dist loadgroup); fi
common=(-q tests/functional)

pytest "${common[@]}" -m "functional and not exclusive" "${side_by_side[@]}" --durations=30 "$@"
shared=$?
pytest "${common[@]}" -m "functional and exclusive" --durations=10 "$@"
exclusive=$?

echo "functional tests: shared run exit $shared, exclusive run exit $exclusive" >&2
for code in "$shared" "$exclusive"; do
  if [ "$code" -ne 0 ] && [ "$code" -ne 5 ]; then exit "$code"; fi
done
if [ "$shared" -eq 5 ] && [ "$exclusive" -eq 5 ]; then exit 5; fi
exit 0
