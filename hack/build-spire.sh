#!/usr/bin/env bash
# Builds spire-server and spire-agent at VERSION from the Go module proxy into
# DIR/bin, through a throwaway module in DIR/mod (the proxy lists no version
# for the commands, so `go install ...@VERSION` is refused; `go get -tool`
# in a module is the way). Used by `make bench-peers`; a no-op once built.
# Needs cgo and gcc: SPIRE's SQLite datastore is mattn/go-sqlite3.
set -euo pipefail
version=${1:?usage: build-spire.sh VERSION DIR}
dir=${2:?usage: build-spire.sh VERSION DIR}
go=${GO:-go}
bin="$dir/bin"
if [ -x "$bin/spire-server" ] && [ -x "$bin/spire-agent" ] && [ -f "$dir/.built-$version" ]; then
  exit 0
fi
command -v gcc >/dev/null || { echo "build-spire: gcc not found; SPIRE's SQLite datastore needs cgo (apt-get install gcc)" >&2; exit 1; }
mkdir -p "$dir/mod" "$bin"
cd "$dir/mod"
[ -f go.mod ] || "$go" mod init sdsagent.local/spire-tools >/dev/null
"$go" get -tool "github.com/spiffe/spire/cmd/spire-agent@$version" "github.com/spiffe/spire/cmd/spire-server@$version"
GOBIN="$bin" CGO_ENABLED=1 "$go" install -trimpath -ldflags '-s -w' \
  github.com/spiffe/spire/cmd/spire-agent github.com/spiffe/spire/cmd/spire-server
touch "$dir/.built-$version"
echo "build-spire: $("$bin/spire-agent" --version 2>&1 | head -1) in $bin"
