#!/bin/bash
# The wheel works as well as the checkout: build it, install it (not editable)
# into a fresh venv outside the repository, and from there, far from the source
# tree, render and validate every example spec and validate every example
# matrix and job. Exit 0 when all of it works; any failure stops the script.
#   bash scripts/check_wheel.sh            (PYTHON=python3.11 to pick the interpreter)
set -Eeuo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
PYTHON=${PYTHON:-python3}

work=$(mktemp -d /tmp/astrostack-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "check_wheel: building the wheel"
"$PYTHON" -m pip wheel -q --no-deps -w "$work/dist" "$repo" >"$work/build.log" 2>&1 || {
  cat "$work/build.log"; exit 1; }
wheel=$(ls "$work"/dist/astrostack-*.whl)
echo "check_wheel: built $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB)"

echo "check_wheel: installing it into a clean venv"
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$wheel" >"$work/install.log" 2>&1 || { cat "$work/install.log"; exit 1; }

cd "$work"  # nothing of the checkout on sys.path from here on
astrostack="$work/venv/bin/astrostack"
location=$("$work/venv/bin/python" -c 'import astrostack; print(astrostack.__file__)')
case "$location" in
  "$work/venv/"*) ;;
  *) echo "check_wheel: astrostack was imported from $location, not from the venv"; exit 1 ;;
esac
"$work/venv/bin/python" - <<'PY'
from astrostack import paths
for folder in (paths.heat_templates_dir(), paths.cloud_init_dir(), paths.images_dir()):
    assert "site-packages" in str(folder), folder
print("check_wheel: package data found in", paths.data_dir("heat_templates").parent)
PY
"$astrostack" --version

export ASTROSTACK_HOME="$work/home"
checked=0
for example in "$repo"/examples/*.yaml; do
  name=$(basename "$example" .yaml)
  if grep -q '^points:' "$example"; then
    "$astrostack" validate "$example" >/dev/null
    "$astrostack" bench schedule "$example" --cron "0 3 * * 1" --dry-run --path "$work/cron-$name" >/dev/null
    echo "check_wheel: $name: matrix valid (validate, bench schedule --dry-run)"
  elif grep -q '^profile:' "$example"; then
    "$astrostack" validate "$example" >/dev/null
    echo "check_wheel: $name: job valid"
  else
    "$astrostack" render "$example" -o "$work/render/$name" >/dev/null 2>"$work/render-$name.err"
    test -s "$work/render/$name/cluster.yaml" && test -s "$work/render/$name/environment.yaml"
    "$astrostack" validate "$example" >"$work/validate-$name.txt"
    echo "check_wheel: $name: rendered ($(find "$work/render/$name" -type f | wc -l) files) and validated" \
         "($(grep -c ' ok ' "$work/validate-$name.txt") checks ok, $(grep -c ' skip ' "$work/validate-$name.txt" || true) skipped)"
  fi
  checked=$((checked + 1))
done
if [ -e "$ASTROSTACK_HOME" ]; then
  echo "check_wheel: offline commands wrote to ASTROSTACK_HOME ($ASTROSTACK_HOME)"; exit 1
fi
echo "check_wheel: ok, $checked example(s) from the installed wheel"
