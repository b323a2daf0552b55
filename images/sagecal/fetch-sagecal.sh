#!/bin/sh
# fetch-sagecal.sh SOURCE SHA256 LOCAL_DIR DEST [URL]: put a SAGECal source tree in DEST.
#   SOURCE=local  LOCAL_DIR (the build context's sagecal-src/) holds either the
#                 source tree itself or exactly one release tarball (*.tar.gz,
#                 one top folder, e.g. sagecal-0.8.5/)
#   SOURCE=auto   as local when LOCAL_DIR holds a tree or a tarball, else URL
#   SOURCE=URL    a release tarball, downloaded with curl
# SHA256, when not empty, must match the tarball.
set -eu

die() { echo "fetch-sagecal: error: $*" >&2; exit 1; }

[ $# -eq 4 ] || [ $# -eq 5 ] || die "usage: fetch-sagecal.sh SOURCE SHA256 LOCAL_DIR DEST [URL]"
source=$1 sha256=$2 local_dir=$3 dest=$4 url=${5:-}
archive=

local_tarballs() {
  find "$local_dir" -maxdepth 1 -type f -name '*.tar.gz' | sort
}

if [ "$source" = auto ]; then
  if [ -f "$local_dir/CMakeLists.txt" ] || [ -n "$(local_tarballs)" ]; then
    source=local
  else
    [ -n "$url" ] || die "SAGECAL_SOURCE=auto: sagecal-src/ is empty and no SAGECAL_URL is set"
    source=$url
  fi
fi

if [ "$source" = local ]; then
  if [ -f "$local_dir/CMakeLists.txt" ]; then
    mkdir -p "$dest"
    cp -a "$local_dir/." "$dest/"
  else
    count=$(local_tarballs | wc -l)
    if [ "$count" -ne 1 ]; then
      die "SAGECAL_SOURCE=local, but images/sagecal/sagecal-src/ holds neither a source tree (CMakeLists.txt at its top) nor exactly one *.tar.gz (it holds $count)"
    fi
    archive=$(local_tarballs)
  fi
else
  archive=/tmp/sagecal.tar.gz
  curl -fsSL --retry 3 -o "$archive" "$source" \
    || die "cannot download $source; without network access, put the source tarball in images/sagecal/sagecal-src/ (see images/sagecal/README.md)"
fi

if [ -n "$archive" ]; then
  if [ -n "$sha256" ]; then
    echo "$sha256  $archive" | sha256sum -c - >/dev/null || die "$archive does not have SHA-256 $sha256"
  fi
  mkdir -p "$dest"
  tar -xzf "$archive" --strip-components=1 -C "$dest" || die "$archive is not a .tar.gz with one top folder"
  if [ "$archive" = /tmp/sagecal.tar.gz ]; then rm -f "$archive"; fi
fi
[ -f "$dest/CMakeLists.txt" ] || die "no CMakeLists.txt at the top of the SAGECal source"

# SAGECal's tree has relative symlinks (src/MPI/data.cpp -> ../MS/data.cpp). A
# tarball made with `tar --transform 's,^\.,sagecal-0.8.5,'` also rewrote
# their targets (GNU tar transforms link targets too), into
# sagecal-0.8.5./MS/data.cpp, which points nowhere: cmake then finds no
# src/MPI/data.cpp. Undo that (TOP./rest -> ../rest) where it resolves; any
# other dangling link is an error, named.
repair_links() {
  broken=$(find "$dest" -xtype l)
  [ -n "$broken" ] || return 0
  echo "$broken" | while IFS= read -r link; do
    target=$(readlink "$link")
    prefix=${target%%./*}
    fixed=.${target#"$prefix"}
    case "$prefix" in
      ''|*/*) die "broken symlink in the SAGECal source: ${link#"$dest"/} -> $target" ;;
    esac
    [ -e "$(dirname "$link")/$fixed" ] || die "broken symlink in the SAGECal source: ${link#"$dest"/} -> $target"
    ln -sfn "$fixed" "$link"
    echo "fetch-sagecal: repaired symlink ${link#"$dest"/} -> $fixed (was $target)"
  done
}
repair_links
echo "fetch-sagecal: SAGECal source from ${archive:-$local_dir} in $dest"
