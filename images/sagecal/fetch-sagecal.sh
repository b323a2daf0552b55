#!/bin/sh
# fetch-sagecal.sh SOURCE SHA256 LOCAL_DIR DEST: put a SAGECal source tree in DEST.
#   SOURCE=local  LOCAL_DIR (the build context's sagecal-src/) holds either the
#                 source tree itself or exactly one release tarball (*.tar.gz)
#   SOURCE=URL    a release tarball, downloaded with curl
# SHA256, when not empty, must match the tarball.
set -eu

die() { echo "fetch-sagecal: error: $*" >&2; exit 1; }

[ $# -eq 4 ] || die "usage: fetch-sagecal.sh SOURCE SHA256 LOCAL_DIR DEST"
source=$1 sha256=$2 local_dir=$3 dest=$4
archive=

if [ "$source" = local ]; then
  if [ -f "$local_dir/CMakeLists.txt" ]; then
    mkdir -p "$dest"
    cp -a "$local_dir/." "$dest/"
  else
    set -- "$local_dir"/*.tar.gz
    if [ $# -ne 1 ] || [ ! -f "$1" ]; then
      die "SAGECAL_SOURCE=local, but images/sagecal/sagecal-src/ holds neither a source tree (CMakeLists.txt at its top) nor exactly one *.tar.gz"
    fi
    archive=$1
  fi
else
  archive=/tmp/sagecal.tar.gz
  curl -fsSL --retry 3 -o "$archive" "$source" \
    || die "cannot download $source; without network access, build with --build-arg SAGECAL_SOURCE=local (see images/sagecal/README.md)"
fi

if [ -n "$archive" ]; then
  if [ -n "$sha256" ]; then
    echo "$sha256  $archive" | sha256sum -c - >/dev/null || die "$archive does not have SHA-256 $sha256"
  fi
  mkdir -p "$dest"
  tar -xzf "$archive" --strip-components=1 -C "$dest" || die "$archive is not a .tar.gz with one top folder"
fi
[ -f "$dest/CMakeLists.txt" ] || die "no CMakeLists.txt at the top of the SAGECal source"
echo "fetch-sagecal: SAGECal source from $source in $dest"
