#!/usr/bin/env bash
# Every document a tracked file names must be in the repository: a reader of
# the repository alone has to find it. Checks each markdown file name a tracked
# file mentions (relative to the file, to the root, or as this repository's
# GitHub URL); test fixtures (*_test.go) are skipped, they name missing files
# on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=0
while IFS= read -r file; do
  case "$file" in *_test.go|gen/*) continue ;; esac
  [ -f "$file" ] || continue
  dir=$(dirname "$file")
  while IFS= read -r ref; do
    path=${ref#*github.com/biobridge/bridge/blob/main/}
    path=${path%%#*}
    case "$ref" in http*://*) [ "$path" = "$ref" ] && continue ;; esac
    if [ -e "$dir/$path" ] || [ -e "$path" ]; then continue; fi
    echo "$file: names $ref, which is not in the repository"
    missing=1
  done < <(grep -oE '(https?://)?[A-Za-z0-9_./-]*[A-Za-z0-9_-]+\.md\b' "$file" 2>/dev/null | sort -u || true)
done < <(git ls-files)
if [ "$missing" -ne 0 ]; then exit 1; fi
echo "every named document is in the repository"
