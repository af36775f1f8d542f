#!/usr/bin/env bash
# usage: bench/instr.sh [-m MODES] [-d SECONDS] [-c CONNS] [-p PROXIES] [-o DIR] [-B]
#   User-space instructions per request of each proxy, counted by valgrind's callgrind: the same
#   binary and load give the same count whatever else the machine is doing, so this answers
#   "did a change remove work" where the wall-clock CPU figures of run.sh move ±25 % on a noisy
#   host. It does not count kernel time (syscalls, TCP on loopback): run.sh measures that.
#   -m MODES     comma-separated: ka (keep-alive), close (Connection: close), h2 (h2c); default ka,close
#   -d SECONDS   measured load per mode (default 8; under callgrind a proxy serves ~1-3k req/s)
#   -c CONNS     client connections (default 16: few requests in flight at the end of a run, so
#                the count is per completed request within ~0.5 %)
#   -p PROXIES   comma-separated: switchyard,nginx,haproxy (default: those installed), and
#                nginx+hdrs,haproxy+hdrs (adding the headers Switchyard adds, as run.sh -H),
#                switchyard-w2 (workers = 2, bench/switchyard-w2.toml)
#   -o DIR       keep callgrind's output files there (for callgrind_annotate), default a temp dir
#   -B           do not run `cargo build --release` first
#   -C           also simulate the caches (callgrind --cache-sim=yes, the host's cache sizes):
#                L1 instruction, L1 data and last-level misses per request, for "fewer instructions, same time"
#
# Set-up as run.sh: the nginx origins (bench/origins.nginx.conf) and the load generator on CPU 0,
# the proxy alone on CPU 1, one worker, the configs of run.sh (NGINX with master_process off so
# that one process does all the work). Each proxy gets a warm-up load, then callgrind's counters
# are zeroed, the measured load runs, and the counters are dumped: Ir of the dump ÷ requests the
# load generator completed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
MODES=ka,close; D=8; C=16; PROX=; OUT=; BUILD=1; CACHE=no
while getopts m:d:c:p:o:BCh o; do
  case $o in
    m) MODES=$OPTARG ;; d) D=$OPTARG ;; c) C=$OPTARG ;; p) PROX=$OPTARG ;; o) OUT=$OPTARG ;; B) BUILD=0 ;;
    C) CACHE=yes ;;
    *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
for t in valgrind callgrind_control wrk nginx taskset; do
  command -v $t >/dev/null || { echo "missing: $t" >&2; exit 1; }
done
[ -n "$PROX" ] || { PROX=switchyard,nginx; command -v haproxy >/dev/null && PROX=$PROX,haproxy; }
[ "$BUILD" = 1 ] && (cd "$root" && cargo build --release -q)
W=$(mktemp -d)
"$here/headers-configs.sh" "$W"
[ -n "$OUT" ] || OUT=$W
mkdir -p "$OUT"
PIDS=()
cleanup() { local p; for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$W"; }
trap cleanup EXIT
wait_port() { local i; for i in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

taskset -c 0 nginx -c "$here/origins.nginx.conf" -p "$W/" >/dev/null 2>&1 & PIDS+=($!)
wait_port 9001 || { echo "origins did not start" >&2; exit 1; }

# load MODE PORT SECONDS: prints the requests completed
load() {
  local mode=$1 port=$2 d=$3
  case $mode in
    ka) taskset -c 0 wrk -t1 -c"$C" -d"${d}s" "http://127.0.0.1:$port/" 2>&1 | awk '/requests in/{print $1}' ;;
    close) taskset -c 0 wrk -t1 -c"$C" -d"${d}s" -H 'Connection: close' "http://127.0.0.1:$port/" 2>&1 | awk '/requests in/{print $1}' ;;
    h2) taskset -c 0 h2load -c"$C" -m10 -t1 -D "$d" "http://127.0.0.1:$port/" 2>&1 | awk '/^requests:/{print $8}' ;;
  esac
}

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo); $(valgrind --version)"
echo "# switchyard $(git -C "$root" rev-parse --short HEAD 2>/dev/null)$(git -C "$root" diff --quiet 2>/dev/null || echo '+dirty'); $(nginx -v 2>&1); $(command -v haproxy >/dev/null && haproxy -v | head -1 | cut -d' ' -f1-3)"
echo "# bench/instr.sh -m $MODES -d $D -c $C -p $PROX$([ $CACHE = yes ] && echo ' -C')"
if [ $CACHE = yes ]; then
  printf '| mode | proxy | requests | instructions per request | L1i misses per request | L1d misses per request | LL misses per request |\n|---|---|---:|---:|---:|---:|---:|\n'
else
  printf '| mode | proxy | requests | instructions per request |\n|---|---|---:|---:|\n'
fi
for mode in ${MODES//,/ }; do
  for p in ${PROX//,/ }; do
    case $p in
      switchyard) port=8083; cmd=("$root/target/release/switchyard" run --config "$here/switchyard.toml") ;;
      # Two workers (bench/switchyard-w2.toml), each with its own listener socket (SO_REUSEPORT).
      switchyard-w2) port=8084; cmd=("$root/target/release/switchyard" run --config "$here/switchyard-w2.toml") ;;
      nginx) port=8082; cmd=(nginx -c "$here/nginx-proxy.conf" -p "$W/" -g 'master_process off;') ;;
      haproxy) port=8081; cmd=(haproxy -f "$here/haproxy.cfg" -db) ;;
      # With the headers Switchyard adds (bench/headers-configs.sh).
      nginx+hdrs) port=8082; cmd=(nginx -c "$W/nginx-headers.conf" -p "$W/" -g 'master_process off;') ;;
      haproxy+hdrs) port=8081; cmd=(haproxy -f "$W/haproxy-headers.cfg" -db) ;;
      *) echo "unknown proxy $p" >&2; continue ;;
    esac
    [ "$mode" = h2 ] && case $p in switchyard*) ;; *) port=$((port + 10)) ;; esac
    f="$OUT/callgrind.$mode.$p"
    taskset -c 1 valgrind --tool=callgrind --cache-sim=$CACHE --callgrind-out-file="$f.%p" "${cmd[@]}" >"$W/$p.log" 2>&1 &
    vp=$!; PIDS+=($vp)
    wait_port "$port" || { echo "$p did not start under valgrind" >&2; kill $vp; continue; }
    load "$mode" "$port" 3 >/dev/null
    callgrind_control -z "$vp" >/dev/null 2>&1
    n=$(load "$mode" "$port" "$D")
    callgrind_control -d "$vp" >/dev/null 2>&1
    kill $vp 2>/dev/null; wait $vp 2>/dev/null
    # callgrind writes the dump asked for after the zero as FILE.PID.1 (the one at exit as FILE.PID).
    ir=$(awk '/^summary:/{print $2}' "$f.$vp.1" 2>/dev/null)
    # With -C the events are Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw.
    misses=$(awk -v n="${n:-0}" '/^summary:/ && NF >= 10 && n > 0 {printf " | %.0f | %.0f | %.1f", $5/n, ($6+$7)/n, ($8+$9+$10)/n}' "$f.$vp.1" 2>/dev/null)
    if [ -z "${n:-}" ] || [ "${n:-0}" -le 0 ] || [ -z "${ir:-}" ]; then
      echo "| $mode | $p | ${n:--} | - |"
    else
      printf '| %s | %s | %s | %s%s |\n' "$mode" "$p" "$n" "$(awk -v i="$ir" -v n="$n" 'BEGIN{printf "%.0f", i/n}')" "$misses"
    fi
  done
done
