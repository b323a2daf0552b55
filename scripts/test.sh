#!/bin/bash
# The test command (README command 2, and what .ci/run calls): sets up
# everything on a fresh Debian 12 machine, then runs lint, unit and
# functional tests (the functional ones bring up the real local cloud).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tox -e lint,unit,functional -- "$@"
