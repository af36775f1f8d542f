#!/usr/bin/env bash
# usage: bench/auth_cost.sh [ROUNDS]
# What asking an auth service about every request costs: CPU per request of Switchyard on a
# plain route and on a route with `auth` (a GET of /verify to the origins, which answer 200),
# beside NGINX plain (nginx-proxy.conf) and with `auth_request` (nginx-auth.conf), in the same
# run. As run.sh: origins and wrk on CPU 0, the proxy alone on CPU 1, wrk -t1 -c64, 2 s warm-up
# then 6 s measured, rounds interleaved. Needs a release build, nginx (with
# http_auth_request_module, as Debian's) and wrk.
set -u
here=$(cd "$(dirname "$0")" && pwd)
SY="$here/../target/release/switchyard"
ROUNDS=${1:-3}
W=/tmp/switchyard-auth-cost; rm -rf "$W"; mkdir -p "$W"
cp "$here/switchyard.toml" "$W/sy-plain.toml"
printf '\n[[routes]]\nupstream = "be"\n' >>"$W/sy-plain.toml"
cp "$here/switchyard.toml" "$W/sy-auth.toml"
printf '\n[upstreams.authz]\nbackends = [{ address = "127.0.0.1:9001" }, { address = "127.0.0.1:9002" }, { address = "127.0.0.1:9003" }]\n\n[[routes]]\nupstream = "be"\nauth = { upstream = "authz", path = "/verify" }\n' >>"$W/sy-auth.toml"
"$SY" check --config "$W/sy-auth.toml" >/dev/null || exit 1
taskset -c 0 nginx -c "$here/origins.nginx.conf" -p "$W/" & ORIGINS=$!
trap 'kill $ORIGINS 2>/dev/null' EXIT
sleep 1
. "$here/cpu-ticks.sh"
start() {
  case $1 in
    sy-*) taskset -c 1 "$SY" run --config "$W/$1.toml" >"$W/$1.log" 2>&1 & P=$!; PORT=8083 ;;
    nginx-plain) taskset -c 1 nginx -c "$here/nginx-proxy.conf" -p "$W/" & P=$!; PORT=8082 ;;
    nginx-auth) taskset -c 1 nginx -c "$here/nginx-auth.conf" -p "$W/" & P=$!; PORT=8082 ;;
  esac
}
echo "# $(date -u '+%F %H:%M UTC'); switchyard $(git -C "$here" rev-parse --short HEAD); $(nginx -v 2>&1)"
for r in $(seq "$ROUNDS"); do
  for c in sy-plain sy-auth nginx-plain nginx-auth; do
    start "$c"
    sleep 1
    # The origins must have served every question too: a non-2xx count means a broken set-up.
    taskset -c 0 wrk -t1 -c64 -d2s "http://127.0.0.1:$PORT/" >/dev/null
    a=$(ticks "$P")
    out=$(taskset -c 0 wrk -t1 -c64 -d6s "http://127.0.0.1:$PORT/")
    b=$(ticks "$P")
    n=$(awk '/requests in/{print $1}' <<<"$out"); rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    bad=$(awk '/Non-2xx/{print $5}' <<<"$out")
    printf "%-12s round %s: %10s req/s %8s us/request%s\n" "$c" "$r" "$rps" \
      "$(per_request "$a" "$b" "$n")" \
      "${bad:+  NON-2XX: $bad}"
    kill "$P"; wait "$P" 2>/dev/null; sleep 0.5
  done
done
