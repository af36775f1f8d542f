#!/usr/bin/env bash
# usage: bench/ab.sh MODE ROUNDS SECONDS NAME=BINARY[@CONFIG] [NAME=BINARY[@CONFIG] ...]
#   A/B of Switchyard binaries (e.g. before and after a change) on the set-up of run.sh: nginx
#   origins and the load generator on CPU 0, each binary alone on CPU 1 with bench/switchyard.toml,
#   interleaved ROUNDS times (A B A B ...) so the host's drift hits both alike.
#   MODE: ka (wrk keep-alive, 64 conns) | close (wrk, Connection: close) | h2 (h2load h2c, -c64 -m10)
#   Prints per round: req/s, CPU µs per request (utime+stime from /proc) and peak RSS (KiB).
#   CONFIG (default bench/switchyard.toml) must listen on 127.0.0.1:8083, e.g. a copy with one
#   setting changed, for the A/B of an option.
#   A binary may be prefixed with a command, e.g. "mi=env LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2 target/release/switchyard".
set -u
[ $# -ge 4 ] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
MODE=$1; R=$2; D=$3; shift 3
here=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d); trap 'pkill -f "$here/origins.nginx.conf" 2>/dev/null; rm -rf "$W"' EXIT
taskset -c 0 nginx -c "$here/origins.nginx.conf" -p "$W/" >/dev/null 2>&1 &
sleep 0.5
tick=$(getconf CLK_TCK)
load() {
  case $MODE in
    h2) taskset -c 0 h2load -c64 -m10 -t1 -D "$1" http://127.0.0.1:8083/ 2>&1 | awk '/^finished/{print $4}' ;;
    ka) taskset -c 0 wrk -t1 -c64 -d"$1"s http://127.0.0.1:8083/ 2>&1 | awk '/Requests\/sec/{print $2}' ;;
    close) taskset -c 0 wrk -t1 -c64 -d"$1"s -H "Connection: close" http://127.0.0.1:8083/ 2>&1 | awk '/Requests\/sec/{print $2}' ;;
    *) echo "unknown mode $MODE" >&2; exit 2 ;;
  esac
}
for r in $(seq "$R"); do
  for v in "$@"; do
    name=${v%%=*}; cmd=${v#*=}; cfg="$here/switchyard.toml"
    case $cmd in *@*) cfg=${cmd##*@}; cmd=${cmd%@*} ;; esac
    # shellcheck disable=SC2086 # the command part is split on purpose
    taskset -c 1 $cmd run --config "$cfg" >"$W/sy.log" 2>&1 & P=$!
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/8083) 2>/dev/null && break; sleep 0.1; done
    load 2 >/dev/null
    t0=$(awk '{print $14+$15}' "/proc/$P/stat")
    rps=$(load "$D")
    t1=$(awk '{print $14+$15}' "/proc/$P/stat")
    rss=$(awk '/VmHWM/{print $2}' "/proc/$P/status")
    kill "$P"; wait "$P" 2>/dev/null
    echo "$r $name req/s=$rps cpu_us/req=$(python3 -c "print(round(($t1-$t0)/$tick*1e6/($rps*$D),2))") peak_rss_kib=$rss"
  done
done
