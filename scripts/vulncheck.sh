#!/usr/bin/env bash
# govulncheck over every module of the workspace, offline.
#
# The Go vulnerability database (vuln.go.dev) cannot be reached from this
# project's machines, so the database is built from a snapshot that a Go
# module ships: golang.org/x/vulndb carries every report as OSV JSON
# (data/osv), and its own cmd/indexdb turns that folder into the database
# layout govulncheck reads with -db file://. The snapshot is pinned below;
# bump VULNDB_VERSION (go list -m -versions golang.org/x/vulndb shows the
# newest pseudo-version) to pick up new reports. The built database is
# cached per version, so only the first run on a machine builds it.
#
# One govulncheck run covers every module (patterns across the go.work
# modules, run from the module that depends on all the others).
#
# Policy: a vulnerability in a required module that our code reaches fails
# the check. Standard-library findings are fixed by a newer Go toolchain, not
# by this repository's go.mod files: they are listed and fail the check only
# with VULNCHECK_STRICT_STDLIB=1 (set it once the project's Go is upgraded).
set -euo pipefail
cd "$(dirname "$0")/.."

GOVULNCHECK_VERSION=v1.9.0
VULNDB_VERSION=v0.0.0-20261105234957-e22db6528018

cache="${VULNDB_CACHE:-$(go env GOCACHE)/biobridge-vulndb}/$VULNDB_VERSION"
if [ ! -f "$cache/index/modules.json" ]; then
  echo "building the offline vulnerability database from golang.org/x/vulndb@$VULNDB_VERSION"
  src="$(cd /tmp && GOWORK=off go mod download -json "golang.org/x/vulndb@$VULNDB_VERSION" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
  rm -rf "$cache.tmp" && mkdir -p "$(dirname "$cache")"
  (cd /tmp && GOWORK=off go run "golang.org/x/vulndb/cmd/indexdb@$VULNDB_VERSION" -vulns "$src/data/osv" -out "$cache.tmp")
  rm -rf "$cache" && mv "$cache.tmp" "$cache"
fi

root="$PWD"
patterns=()
for d in $(go list -m -f '{{.Dir}}'); do
  patterns+=("$(realpath --relative-to="$root/services/devstack" "$d")/...")
done
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
# Exit code 3 means "vulnerabilities found"; the report below decides.
(cd services/devstack && GOWORK="$root/go.work" go run "golang.org/x/vuln/cmd/govulncheck@$GOVULNCHECK_VERSION" \
  -db "file://$cache" -format json "${patterns[@]}") >"$out" || [ $? -eq 3 ]

python3 - "$out" <<'PY'
import json, os, sys

text = open(sys.argv[1]).read()
dec, i, osvs, called = json.JSONDecoder(), 0, {}, {}
while i < len(text):
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    obj, i = dec.raw_decode(text, i)
    if "osv" in obj:
        osvs[obj["osv"]["id"]] = obj["osv"].get("summary", "")
    f = obj.get("finding")
    if f and f["trace"] and f["trace"][0].get("function"):
        top = f["trace"][0]
        called[f["osv"]] = (top["module"], top.get("version", ""), f.get("fixed_version", "none"))

stdlib = {k: v for k, v in called.items() if v[0] == "stdlib"}
modules = {k: v for k, v in called.items() if v[0] != "stdlib"}
for title, found in (("required modules", modules), ("standard library (fixed by a newer Go toolchain)", stdlib)):
    print(f"vulnerabilities our code reaches in {title}: {len(found)}")
    for vid, (mod, ver, fixed) in sorted(found.items()):
        print(f"  {vid} {mod}@{ver} fixed in {fixed}: {osvs.get(vid, '')}")
strict = os.environ.get("VULNCHECK_STRICT_STDLIB") == "1"
if modules or (strict and stdlib):
    sys.exit(1)
PY
