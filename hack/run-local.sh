#!/usr/bin/env bash
# Starts the built-in CA and the agent in the foreground on temporary paths.
# Ctrl-C stops both and removes the temporary directory.
set -euo pipefail
bin=${1:-bin/sdsagent}
ca_listen=${CA_LISTEN:-127.0.0.1:15012}
http_addr=${HTTP_ADDR:-127.0.0.1:15020}
dir=$(mktemp -d "${TMPDIR:-/tmp}/sdsagent.XXXXXX")
socket="$dir/socket"

ca_pid=""
cleanup() {
  trap - EXIT INT TERM
  [ -n "$ca_pid" ] && kill "$ca_pid" 2>/dev/null && wait "$ca_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

"$bin" ca --dir "$dir/ca" --listen "$ca_listen" --log-format console &
ca_pid=$!

# The CA writes its root and token on first start; wait for them briefly.
for _ in $(seq 1 100); do
  [ -s "$dir/ca/root-cert.pem" ] && [ -s "$dir/ca/token" ] && break
  kill -0 "$ca_pid" 2>/dev/null || { echo "the CA exited; is $ca_listen in use? try: make run CA_LISTEN=127.0.0.1:25012" >&2; exit 1; }
  sleep 0.05
done

cat <<INFO

  sdsagent is starting against the built-in CA at $ca_listen
  SDS socket:   $socket
  readiness:    curl -s http://$http_addr/ready
  secrets:      $bin secrets --http-addr $http_addr
  as JSON:      curl -s http://$http_addr/debug/secrets
  metrics:      curl -s http://$http_addr/metrics | grep ^sdsagent_
  Ctrl-C stops the agent and the CA.

INFO

"$bin" run \
  --ca-addr "$ca_listen" \
  --ca-root-cert "$dir/ca/root-cert.pem" \
  --token-file "$dir/ca/token" \
  --socket "$socket" \
  --http-addr "$http_addr" \
  --file-mounted-certs=false \
  --log-format console &
agent_pid=$!
trap 'kill -TERM "$agent_pid" 2>/dev/null' INT TERM
status=0
wait "$agent_pid" || status=$?
# A signal interrupts the first wait; wait again for the agent to finish.
if kill -0 "$agent_pid" 2>/dev/null; then wait "$agent_pid" || status=$?; fi
exit "$status"
