#!/usr/bin/env bash
# usage: bench/profile.sh [-d SECONDS] [-c CONNS] [-n] [-2] [-g]
#   CPU profile of Switchyard's request path: origins + wrk on CPU 0, Switchyard (one worker,
#   bench/switchyard.toml) on CPU 1, `perf record -e cpu-clock` on it while wrk loads it.
#   -d SECONDS  profiled time (default 10)   -c CONNS  wrk connections (default 64)
#   -n          a new connection per request ("Connection: close")
#   -2          HTTP/2 h2c with h2load (-c CONNS -m 10) instead of HTTP/1.1 with wrk
#   -g          record call graphs (dwarf; larger files, slower)
# Needs perf (apt-get install linux-perf); the cpu-clock software event works in VMs without
# hardware counters. Writes /tmp/switchyard-profile/perf.data and prints the top symbols, then the
# same grouped by crate/module. Run target/release/switchyard built by `cargo build --release`.
set -u
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/.." && pwd)
D=10; C=64; EXTRA=(); G=(); H2=0
while getopts d:c:n2gh o; do
  case $o in d) D=$OPTARG ;; c) C=$OPTARG ;; n) EXTRA=(-H "Connection: close") ;; 2) H2=1 ;; g) G=(--call-graph dwarf,16384) ;;
    *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;; esac
done
W=/tmp/switchyard-profile; rm -rf "$W"; mkdir -p "$W/logs"
ulimit -n "$(ulimit -Hn)" 2>/dev/null
PIDS=()
cleanup() { local p; for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
trap cleanup EXIT; trap 'exit 130' INT TERM
wait_port() { local i; for i in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

taskset -c 0 nginx -c "$here/origins.nginx.conf" -p "$W/" >"$W/origins.log" 2>&1 & PIDS+=($!)
wait_port 9001 && wait_port 9003 || { echo "origins failed"; exit 1; }
taskset -c 1 "$root/target/release/switchyard" run --config "$here/switchyard.toml" >"$W/switchyard.log" 2>&1 & SYP=$!; PIDS+=($SYP)
wait_port 8083 || { echo "switchyard failed: $(tail -3 "$W/switchyard.log")"; exit 1; }
if [ $H2 = 1 ]; then
  load() { taskset -c 0 h2load -c"$C" -m10 -t1 -D "$1" http://127.0.0.1:8083/; }
else
  load() { taskset -c 0 wrk -t1 -c"$C" -d"$1s" ${EXTRA[@]+"${EXTRA[@]}"} http://127.0.0.1:8083/; }
fi
load 2 >/dev/null 2>&1
load $((D + 2)) >"$W/load.txt" 2>&1 & WRK=$!; PIDS+=($WRK)
sleep 1
perf record -e cpu-clock -F 2999 ${G[@]+"${G[@]}"} -p "$SYP" -o "$W/perf.data" -- sleep "$D" >"$W/perf-record.log" 2>&1
wait $WRK
grep -E "Requests/sec|^finished in" "$W/load.txt"
echo "== top symbols (self time, % of Switchyard's CPU)"
perf report -i "$W/perf.data" --no-children --sort dso,symbol --percent-limit 0.7 --stdio -g none 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | cut -c1-150 | head -60
echo "== by area (self time)"
perf report -i "$W/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null | grep -v '^#' | awk '
  $1 ~ /%$/ { p=$1+0; d=$2; s=$0; sub(/^ *[0-9.]+% +[^ ]+ +\[[^]]*\] +/, "", s)
    if (d ~ /kernel/) a="kernel (syscalls, TCP/IP on loopback, scheduler)"
    else if (d ~ /libc/ && s ~ /malloc|free|realloc|memalign|_int_|unlink_chunk|consolidate/) a="libc malloc/free"
    else if (d ~ /libc/) a="libc other (memcpy, ...)"
    else if (d ~ /vdso/) a="vdso (clock_gettime)"
    else if (s ~ /^hyper::proto::h1::role|httparse/) a="hyper h1 parse/encode"
    else if (s ~ /^<?h2::|^<?hpack|^<?fnv/) a="h2 crate (HTTP/2 frames, HPACK, streams)"
    else if (s ~ /^<?hyper/) a="hyper other (dispatch, client, body)"
    else if (s ~ /^<?tokio/) a="tokio runtime/io/timers/channels"
    else if (s ~ /^<?switchyard/) a="switchyard"
    else if (s ~ /^<?http::|^<?bytes::/) a="http/bytes (header maps, Bytes)"
    else if (s ~ /alloc|drop_in_place/) a="Rust alloc/drop glue"
    else a="other"
    t[a] += p }
  END { for (a in t) printf "%6.2f%%  %s\n", t[a], a }' | sort -rn
