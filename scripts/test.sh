#!/bin/bash
# The test command (README command 2, and what .ci/run calls): sets up
# everything on a fresh Debian 12 machine, starts the Docker engine, then runs
# lint, unit and functional tests (the functional ones bring up the real
# local cloud: Heat engine, container-VMs, Swarm, Open MPI).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -c 'from astrostack.local.dockerd import ensure_dockerd; ensure_dockerd()'
# Functional tests must not skip for want of Docker here: they fail instead.
export ASTROSTACK_REQUIRE_LOCAL_CLOUD=1
exec .venv/bin/tox -e lint,unit,functional -- "$@"
