#!/usr/bin/env bash
# usage: bench/route_cost.sh [ROUNDS]
# CPU per request of Switchyard on a plain route, on a route with `compress = {}` and on one with
# `cors` (requests with an allowed `Origin`), for the origins' tiny responses (below
# `min_length`, so none is compressed: only the path differs, the HTTP/1 relay for the plain
# route, hyper's for the other two). As run.sh: origins and wrk
# on CPU 0, Switchyard alone on CPU 1, wrk -t1 -c64, 2 s warm-up then 6 s measured, rounds
# interleaved. Needs a release build (cargo build --release), nginx and wrk.
set -u
here=$(cd "$(dirname "$0")" && pwd)
SY="$here/../target/release/switchyard"
ROUNDS=${1:-3}
W=/tmp/switchyard-route-cost; rm -rf "$W"; mkdir -p "$W"
cp "$here/switchyard.toml" "$W/plain.toml"
printf '\n[[routes]]\nupstream = "be"\n' >>"$W/plain.toml"
cp "$here/switchyard.toml" "$W/compress.toml"
printf '\n[[routes]]\nupstream = "be"\ncompress = {}\n' >>"$W/compress.toml"
cp "$here/switchyard.toml" "$W/cors.toml"
printf '\n[[routes]]\nupstream = "be"\ncors = { allow_origins = ["https://app.example"] }\n' >>"$W/cors.toml"
taskset -c 0 nginx -c "$here/origins.nginx.conf" -p "$W/" & ORIGINS=$!
trap 'kill $ORIGINS 2>/dev/null' EXIT
sleep 1
. "$here/cpu-ticks.sh"
for r in $(seq "$ROUNDS"); do
  for c in plain compress cors; do
    hdr=(); [ "$c" = cors ] && hdr=(-H "Origin: https://app.example")
    taskset -c 1 "$SY" run --config "$W/$c.toml" >"$W/$c.log" 2>&1 & P=$!
    sleep 1
    taskset -c 0 wrk -t1 -c64 -d2s "${hdr[@]}" http://127.0.0.1:8083/ >/dev/null
    a=$(ticks "$P")
    out=$(taskset -c 0 wrk -t1 -c64 -d6s "${hdr[@]}" http://127.0.0.1:8083/)
    b=$(ticks "$P")
    n=$(awk '/requests in/{print $1}' <<<"$out"); rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    printf "%-9s round %s: %10s req/s %8s us/request\n" "$c" "$r" "$rps" \
      "$(per_request "$a" "$b" "$n")"
    kill "$P"; wait "$P" 2>/dev/null; sleep 0.5
  done
done
