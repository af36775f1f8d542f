#!/usr/bin/env bash
# usage: bench/run.sh [-d SECONDS] [-s SCENARIOS] [-r ROUNDS] [-w MINUTES] [-B] [-D] [-H] [-j]
#   -d SECONDS   measured time of each load run (default 10; each is preceded by a 2 s warm-up)
#   -s LIST      comma-separated scenarios (default a,b,c,d,e,f,g,l):
#                  a  HTTP/1.1 keep-alive, 64 connections        (wrk)
#                  b  HTTP/1.1 keep-alive, 1000 connections      (wrk)
#                  c  a new connection per request, 64 conns     (wrk, "Connection: close")
#                  d  HTTP/2 prior-knowledge h2c, 64 conns x 10 streams (h2load)
#                  e  workers = 1 vs workers = 2, both pinned to CPU 1 (wrk, 64 conns): Switchyard,
#                     and NGINX with worker_processes 1 and 2 as the reference
#                  f  memory: RSS idle, and holding 10,000 idle keep-alive client connections
#                  g  apply a change to an upstream of 10,000 backends: library timing
#                     (cargo bench --bench apply) and live, through the admin API, under wrk load
#                  l  HTTP/1.1 keep-alive at one fixed rate for every proxy (h2load --h1 --rps, 64 conns;
#                     RATE=req/s in the environment, default 40000): latency at equal load
#                  p  criterion microbenchmark of every balancer's pick (cargo bench --bench balancers)
#                  z  gzip: a 10 KiB HTML page (the first 10 KiB of ARCHITECTURE.md) compressed by each
#                     proxy (Switchyard `compress = { level = LEVEL }`, NGINX `gzip_comp_level LEVEL`,
#                     HAProxy's libslz, which has no levels; LEVEL in the environment, default 1),
#                     wrk -c64 with Accept-Encoding: gzip
#                  q  HTTP/1.1 keep-alive, 64 connections, each proxy held to QUOTA % of CPU 1 (cgroup v1
#                     cpu.cfs_quota_us, 10 ms period; QUOTA in the environment, default 40): the proxy,
#                     not the load side, is then the bottleneck, so req/s is the proxy's capacity
#   -r ROUNDS    run the proxies of scenarios a-e ROUNDS times, interleaved (A B C A B C ...), and
#                add a table of the per-proxy medians (default 1): steadier figures on a noisy host
#   -w MINUTES   before each scenario, wait up to MINUTES for the machine to be quiet (other
#                processes using < 10% of the CPUs over 3 s); the busy figure is printed either way
#   -B           do not run `cargo build --release` first
#   -D           also run NGINX with `listen ... deferred` and HAProxy with `bind ... defer-accept`
#                (TCP_DEFER_ACCEPT, which Switchyard's listeners use by default; off by default in
#                both): does the difference in scenario (c) come from that option alone?
#   -H           also run NGINX and HAProxy adding the headers Switchyard adds by contract
#                (X-Forwarded-For, -Proto, -Host, X-Request-Id; bench/headers-configs.sh): the
#                same work per request, where the base configs add none of them
#   -j           also run Switchyard with jemalloc preloaded (LD_PRELOAD of Debian's libjemalloc2):
#                an experiment for the allocator recommendation in BENCHMARKS.md, not a default
#
# Side-by-side on loopback, as ../shared/peerbench/run.sh: the three nginx origins and the load
# generator pinned to CPU 0, each proxy under test alone on CPU 1 with one worker. Prints one
# table per scenario: req/s, p50, p99, errors, the proxy's own CPU time per request (utime+stime
# of its whole process tree, from /proc), its peak RSS, and how busy CPU 0 (the load side) was
# and what it spent per request. Needs wrk, nginx (origins), python3; uses haproxy and h2load
# when installed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
D=10; SCEN=a,b,c,d,e,f,g,l; BUILD=1; JE=; WAIT=0; ROUNDS=1; DEFER=0; HDRS=0
while getopts d:s:r:w:BDHjh o; do
  case $o in
    d) D=$OPTARG ;; s) SCEN=$OPTARG ;; w) WAIT=$OPTARG ;; r) ROUNDS=$OPTARG ;; B) BUILD=0 ;; D) DEFER=1 ;; H) HDRS=1 ;;
    j) JE=$(ldconfig -p 2>/dev/null | awk '/libjemalloc\.so\.2 /{print $NF; exit}'); [ -n "$JE" ] || echo "no libjemalloc.so.2 (apt-get install libjemalloc2); -j ignored" >&2 ;;
    *) sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
W=/tmp/switchyard-bench
SY="$root/target/release/switchyard"
HZ=$(getconf CLK_TCK)
ulimit -n "$(ulimit -Hn)" 2>/dev/null   # 1000 and 10,000 connections need the descriptors
has() { case ",$SCEN," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
for t in wrk nginx python3 taskset; do
  command -v $t >/dev/null || { echo "missing: $t" >&2; exit 1; }
done

# ---- processes we start, and their cleanup -----------------------------------------------
STARTED=()
tree() { local p=$1 c; echo "$p"; for c in $(pgrep -P "$p"); do tree "$c"; done; }
stop() { # stop one started process and its descendants
  local p=$1 all q
  all=$(tree "$p" 2>/dev/null)
  kill "$p" 2>/dev/null; wait "$p" 2>/dev/null
  for q in $all; do kill "$q" 2>/dev/null; done
  return 0
}
cleanup() { local p; for p in ${STARTED[@]+"${STARTED[@]}"}; do stop "$p"; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { local i; for i in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
cpu_ticks() { # "utime stime" in clock ticks, summed over pids
  local u=0 s=0 p a b; for p in "$@"; do [ -r "/proc/$p/stat" ] && read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat") && u=$((u + a)) && s=$((s + b)); done; echo "$u $s"; }
# cpu_per_req "U0 S0" "U1 S1" REQUESTS: prints "total usr+sys" in microseconds per request
cpu_per_req() { awk -v a="$1" -v b="$2" -v hz="$HZ" -v n="${3:-0}" 'BEGIN{ split(a, x, " "); split(b, y, " ");
  if (n <= 0) { print "- -"; exit } u=(y[1]-x[1])/hz*1e6/n; s=(y[2]-x[2])/hz*1e6/n; printf "%.2f %.1f+%.1f", u+s, u, s }'; }
# CPU 0 runs the load generator and the origins: its busy ticks (user, nice, system, irq,
# softirq) over a load run say what the load side spent per request, and how close to saturated
# it was. Throughput in the closed loop cannot pass 1 / (CPU 0 time per request).
cpu0_ticks() { awk '/^cpu0 /{print $2+$3+$4+$7+$8}' /proc/stat; }
# cpu0_cols TICKS0 TICKS1 REQUESTS SECONDS: prints "busy% us/request"
cpu0_cols() { awk -v a="$1" -v b="$2" -v n="${3:-0}" -v d="$4" -v hz="$HZ" 'BEGIN{
  if (n <= 0) { print "- -"; exit } t = b - a; p = t/hz/d*100; printf "%.0f %.2f", (p > 100 ? 100 : p), t/hz*1e6/n }'; }
mem_kib() { # sum of a /proc/PID/status field (VmRSS, VmHWM) over pids
  local f=$1 s=0 p r; shift
  for p in "$@"; do r=$(awk -v f="$f:" '$1==f{print $2}' "/proc/$p/status" 2>/dev/null); s=$((s + ${r:-0})); done; echo $s; }
mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }
busy() { # % of all CPUs busy over 3 s (nothing of ours runs while this samples)
  local a b; a=$(awk '/^cpu /{print $2+$3+$4+$7+$8, $5+$6}' /proc/stat); sleep 3
  b=$(awk '/^cpu /{print $2+$3+$4+$7+$8, $5+$6}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN{ split(a, x, " "); split(b, y, " "); d=(y[1]-x[1])+(y[2]-x[2]); printf "%.0f", (d > 0) ? 100 * (y[1] - x[1]) / d : 0 }'; }
load() { # waits for a quiet machine (-w), then says how quiet it is
  local b t0=$SECONDS; b=$(busy)
  while [ "$b" -ge 10 ] && [ $((SECONDS - t0)) -lt $((WAIT * 60)) ]; do sleep 10; b=$(busy); done
  echo "# machine before this: ${b}% CPU busy (other processes), load average $(cut -d' ' -f1-3 /proc/loadavg), $(tw) sockets in TIME_WAIT$([ $((SECONDS - t0)) -gt 5 ] && echo ", after waiting $((SECONDS - t0)) s")"; }
tw() { ss -tan state time-wait 2>/dev/null | tail -n +2 | wc -l; }

to_ms() { awk -v v="$1" 'BEGIN{ if (v=="") {print "-"; exit} n=v+0; u=v; sub(/^[0-9.]+/,"",u);
  if (u=="us") n/=1000; else if (u=="s") n*=1000; else if (u=="m") n*=60000; printf "%.3f", n }'; }

# start NAME CPU CMD...: runs CMD pinned, logs to $W/NAME.log, sets PID. With CG set (scenario q),
# the process joins that cgroup before it execs, so every thread and child it makes is inside it.
CG=
start() { local name=$1 cpu=$2; shift 2
  if [ -n "$CG" ] && [ "$cpu" = 1 ]; then
    taskset -c "$cpu" sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CG" "$@" >"$W/$name.log" 2>&1 &
  else taskset -c "$cpu" "$@" >"$W/$name.log" 2>&1 & fi
  PID=$!; STARTED+=("$PID"); }

# ---- set-up --------------------------------------------------------------------------------
rm -rf "$W"; mkdir -p "$W/logs"
if [ $BUILD = 1 ]; then
  echo "# cargo build --release"
  (cd "$root" && cargo build --release 2>&1 | tail -1) || exit 1
fi
[ -x "$SY" ] || { echo "no $SY (run without -B)" >&2; exit 1; }
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo); kernel $(uname -r)"
echo "# switchyard $(git -C "$root" rev-parse --short HEAD 2>/dev/null)$(git -C "$root" diff --quiet 2>/dev/null || echo '+dirty'); $(nginx -v 2>&1); $(command -v haproxy >/dev/null && haproxy -v | head -1 | cut -d' ' -f1-3); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
load

in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in 9001 9002 9003 8081 8082 8083 8084 8086 8091 8092; do
  in_use $p && { echo "port $p is already in use (another benchmark or test running?): ss -ltnp | grep :$p" >&2; exit 1; }
done
start origins 0 nginx -c "$here/origins.nginx.conf" -p "$W/"; ORIGINS=$PID
wait_port 9001 && wait_port 9002 && wait_port 9003 && kill -0 "$ORIGINS" 2>/dev/null \
  || { echo "origins failed: $(cat "$W/origins.log")"; exit 1; }

# name h1-port h2-port command (the proxies under test; those not installed are left out)
PROXIES=("switchyard 8083 8083 $SY run --config $here/switchyard.toml")
[ -n "$JE" ] && PROXIES+=("sy+jemalloc 8083 8083 env LD_PRELOAD=$JE $SY run --config $here/switchyard.toml")
command -v haproxy >/dev/null && PROXIES+=("haproxy 8081 8091 haproxy -f $here/haproxy.cfg -db")
PROXIES+=("nginx 8082 8092 nginx -c $here/nginx-proxy.conf -p $W/")
if [ $DEFER = 1 ]; then
  command -v haproxy >/dev/null && sed 's/^\(  bind 127.0.0.1:8081\)$/\1 defer-accept/' "$here/haproxy.cfg" >"$W/haproxy-deferred.cfg" \
    && PROXIES+=("haproxy-deferred 8081 8091 haproxy -f $W/haproxy-deferred.cfg -db")
  sed 's/^\(    listen 127.0.0.1:8082\);/\1 deferred;/' "$here/nginx-proxy.conf" >"$W/nginx-deferred.conf"
  PROXIES+=("nginx-deferred 8082 8092 nginx -c $W/nginx-deferred.conf -p $W/")
fi
if [ $HDRS = 1 ]; then
  "$here/headers-configs.sh" "$W"
  command -v haproxy >/dev/null && PROXIES+=("haproxy+hdrs 8081 8091 haproxy -f $W/haproxy-headers.cfg -db")
  PROXIES+=("nginx+hdrs 8082 8092 nginx -c $W/nginx-headers.conf -p $W/")
fi

HDR() { printf "%-16s %10s %9s %9s %8s %11s %8s %12s %6s %12s\n" proxy req/s p50_ms p99_ms errors cpu_us/req rss_MiB usr+sys_us cpu0_% cpu0_us/req; }
ROW() { printf "%-16s %10s %9s %9s %8s %11s %8s %12s %6s %12s\n" "$@"; printf "%s\n" "$*" >>"$W/rows"; }
# MEDIANS: after a scenario run with -r > 1, the median of each column per proxy
MEDIANS() {
  [ "$ROUNDS" -gt 1 ] && [ -s "$W/rows" ] || { rm -f "$W/rows"; return 0; }
  echo "-- median of $ROUNDS rounds"; HDR
  python3 - "$W/rows" "$W/pairs" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rows.setdefault(f[0], []).append(f[1:])
def med(vals, plus=False):
    try:
        if plus:
            u = statistics.median(float(v.split("+")[0]) for v in vals)
            s = statistics.median(float(v.split("+")[1]) for v in vals)
            return f"{u:.1f}+{s:.1f}"
        return f"{statistics.median(float(v) for v in vals):.2f}"
    except ValueError:
        return "-"
for name, rs in rows.items():
    cols = list(zip(*rs))
    out = [med(c, plus=(i == 6)) for i, c in enumerate(cols)] + ["-"] * (9 - len(cols))
    print(f"{name:<16} {out[0]:>10} {out[1]:>9} {out[2]:>9} {out[3]:>8} {out[4]:>11} {out[5]:>8} {out[6]:>12} {out[7]:>6} {out[8]:>12}")
# Rounds are interleaved, so round k of every proxy ran under the same drift of the host: the
# ratio within a round is steadier than the ratio of medians.
names = list(rows)
# Which rows to compare: the first with every other, or the pairs a scenario names in $W/pairs.
pairs = [(names[0], o) for o in names[1:]]
try:
    pairs = [tuple(l.split()) for l in open(sys.argv[2]) if len(l.split()) == 2]
except (IndexError, OSError):
    pass
def col(r, i):
    try:
        return float(r[i])
    except (ValueError, IndexError):
        return None
for first, other in pairs:
    if first not in rows or other not in rows:
        continue
    for label, i in (("CPU/request", 4), ("req/s", 0), ("p99", 2)):
        xy = [(col(a, i), col(b, i)) for a, b in zip(rows[first], rows[other])]
        rs = sorted(x / y for x, y in xy if x is not None and y)
        if rs:
            print(f"   {first} / {other} {label}, per round: median {statistics.median(rs):.2f}"
                  f" ({rs[0]:.2f}-{rs[-1]:.2f}), below 1 in {sum(r < 1 for r in rs)} of {len(rs)}")
# The load side's ceiling: CPU 0 at 100 % busy, at the CPU 0 time per request measured.
for name, rs in rows.items():
    c0 = [col(r, 8) for r in rs if len(r) > 8]
    c0 = [c for c in c0 if c]
    if c0:
        print(f"   {name}: CPU 0 {statistics.median(col(r, 7) or 0 for r in rs):.0f} % busy, "
              f"{statistics.median(c0):.2f} us/request: ceiling {1e6 / statistics.median(c0):.0f} req/s")
PY
  rm -f "$W/rows" "$W/pairs"; }

# wrk_row NAME PORT CONNS [wrk args...]: warm-up, then the measured run; PIDS = tree to account
wrk_row() {
  local name=$1 port=$2 c=$3 out t0 t1 z0 z1 rps reqs p50 p99 errs cpu rss; shift 3
  taskset -c 0 wrk -t1 -c"$c" -d2s "$@" "http://127.0.0.1:$port/" >/dev/null 2>&1
  t0=$(cpu_ticks $PIDS); z0=$(cpu0_ticks)
  out=$(taskset -c 0 wrk -t1 -c"$c" -d"${D}s" --latency "$@" "http://127.0.0.1:$port/" 2>&1)
  t1=$(cpu_ticks $PIDS); z1=$(cpu0_ticks)
  echo "$out" >"$W/wrk-$name-$port-$c.txt"
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out"); reqs=$(awk '/requests in/{print $1}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%"{print $2}' <<<"$out")"); p99=$(to_ms "$(awk '$1=="99%"{print $2}' <<<"$out")")
  errs=$(awk '/Non-2xx/{s+=$NF} /Socket errors/{gsub(/,/,""); s+=$4+$6+$8+$10} END{print s+0}' <<<"$out")
  if [ "$PIDS" = - ]; then cpu="- -"; rss=-; else
    cpu=$(cpu_per_req "$t0" "$t1" "$reqs")
    rss=$(mib "$(mem_kib VmHWM $PIDS)")
  fi
  ROW "$name" "${rps:--}" "$p50" "$p99" "$errs" ${cpu% *} "$rss" ${cpu#* } $(cpu0_cols "$z0" "$z1" "$reqs" "$D")
}

# h2_row NAME PORT [h2load args...]: h2load warm-up, then measured run with a per-request log
# for percentiles (default: -c64 -m10, h2c)
h2_row() {
  local name=$1 port=$2 out t0 t1 z0 z1 rps done_ errs lat cpu rss args; shift 2
  args=("$@"); [ ${#args[@]} -gt 0 ] || args=(-c64 -m10)
  taskset -c 0 h2load "${args[@]}" -t1 -D 2 "http://127.0.0.1:$port/" >/dev/null 2>&1
  t0=$(cpu_ticks $PIDS); z0=$(cpu0_ticks)
  out=$(taskset -c 0 h2load "${args[@]}" -t1 -D "$D" --log-file="$W/h2-$name.log" "http://127.0.0.1:$port/" 2>&1)
  t1=$(cpu_ticks $PIDS); z1=$(cpu0_ticks)
  echo "$out" >"$W/h2load-$name.txt"
  rps=$(awk '/^finished in/{print $4}' <<<"$out" | tr -d ,)
  # requests: T total, S started, D done, OK succeeded, F failed, E errored, TO timeout
  # status codes: A 2xx, B 3xx, C 4xx, D 5xx
  done_=$(awk '/^requests:/{print $6}' <<<"$out")
  errs=$(awk '/^requests:/{e=$10+$12+$14} /^status codes:/{e+=$7+$9} END{print e+0}' <<<"$out")
  lat=$(cut -f3 "$W/h2-$name.log" | sort -n | awk '{v[NR]=$1} END{ if (NR==0) {print "- -"; exit}
        printf "%.3f %.3f", v[int(NR*0.5)+1]/1000, v[int(NR*0.99)+1]/1000 }')
  rm -f "$W/h2-$name.log"
  if [ "$PIDS" = - ]; then cpu="- -"; rss=-; else
    cpu=$(cpu_per_req "$t0" "$t1" "$done_")
    rss=$(mib "$(mem_kib VmHWM $PIDS)")
  fi
  ROW "$name" "${rps:--}" ${lat% *} ${lat#* } "$errs" ${cpu% *} "$rss" ${cpu#* } $(cpu0_cols "$z0" "$z1" "$done_" "$D")
}

# with_proxy "SPEC" FN ARGS...: starts the proxy of SPEC pinned to CPU 1, runs FN, stops it
with_proxy() {
  local spec=$1 name port2 port; shift
  read -r name port port2 _ <<<"$spec"
  if in_use "$port"; then echo "$name: port $port is in use by another process; skipped"; return; fi
  start "$name" 1 ${spec#* * * }
  if ! wait_port "$port" || ! kill -0 "$PID" 2>/dev/null; then echo "$name: did not start: $(tail -3 "$W/$name.log")"; stop "$PID"; return; fi
  if ! kill -0 "$ORIGINS" 2>/dev/null; then echo "the origins exited; stopping" >&2; exit 1; fi
  PIDS=$(tree "$PID" | tr '\n' ' ')
  "$@" "$name" "$port" "$port2"
  stop "$PID"; sleep 0.5
}
h1() { local c=$1; shift; local name=$1 port=$2; shift 3; wrk_row "$name" "$port" "$c" ${EXTRA[@]+"${EXTRA[@]}"}; }
h2() { h2_row "$1" "$3"; }
fixed() { h2_row "$1" "$2" --h1 -c64 --rps="$RPC"; }

scenario_h1() { # title conns
  echo; echo "== $1"; load; HDR
  PIDS=-; wrk_row direct 9001 "$2" ${EXTRA[@]+"${EXTRA[@]}"}; rm -f "$W/rows"
  local s r; for r in $(seq "$ROUNDS"); do for s in "${PROXIES[@]}"; do with_proxy "$s" h1 "$2"; done; done
  MEDIANS
}

EXTRA=()
has a && scenario_h1 "(a) HTTP/1.1 keep-alive, 64 connections: wrk -t1 -c64 -d${D}s" 64
has b && scenario_h1 "(b) HTTP/1.1 keep-alive, 1000 connections: wrk -t1 -c1000 -d${D}s" 1000
if has c; then
  EXTRA=(-H "Connection: close")
  scenario_h1 "(c) new connection per request: wrk -t1 -c64 -d${D}s -H 'Connection: close'" 64
  EXTRA=()
fi

if has d; then
  echo; echo "== (d) HTTP/2 h2c (prior knowledge): h2load -c64 -m10 -t1 -D $D"; load
  if command -v h2load >/dev/null; then
    HDR; rm -f "$W/rows"
    for r in $(seq "$ROUNDS"); do for s in "${PROXIES[@]}"; do with_proxy "$s" h2; done; done
    MEDIANS
  else echo "h2load not installed (apt-get install nghttp2-client)"; fi
fi

if has l; then
  # Closed-loop runs (a) load each proxy as hard as it goes, so a faster proxy also makes CPU 0
  # (wrk and the origins) busier, and its p99 carries that. Here every proxy gets the same
  # offered load, below the slowest one's capacity: the latency the proxy itself adds.
  RPC=$(( ${RATE:-40000} / 64 ))
  echo; echo "== (l) HTTP/1.1 keep-alive at a fixed rate, $((RPC * 64)) req/s offered to every proxy: h2load --h1 -c64 --rps=$RPC -t1 -D $D"; load
  if command -v h2load >/dev/null; then
    HDR; rm -f "$W/rows"
    PIDS=-; h2_row direct 9001 --h1 -c64 --rps="$RPC"; rm -f "$W/rows"
    for r in $(seq "$ROUNDS"); do for s in "${PROXIES[@]}"; do with_proxy "$s" fixed; done; done
    MEDIANS
  else echo "h2load not installed (apt-get install nghttp2-client)"; fi
fi

if has q; then
  # The reference machine's load side (CPU 0) had room to spare, so its closed loop measured each
  # proxy's capacity. Here CPU 0 saturates first (every proxy reaches about the same req/s, see
  # the cpu0 columns of (a)), so (a) cannot show a throughput ratio. Holding every proxy to the
  # same share of CPU 1 restores that regime: the proxy saturates, CPU 0 does not, and req/s is
  # what that share of a core serves. throttled_% (periods in which the quota ran out) and
  # cpu0_% say whether it held.
  QUOTA=${QUOTA:-40}; CG=/sys/fs/cgroup/cpu/switchyard-bench
  echo; echo "== (q) HTTP/1.1 keep-alive, 64 connections, each proxy held to ${QUOTA}% of CPU 1 (cpu.cfs_quota_us $((QUOTA * 100)) per 10000 us): wrk -t1 -c64 -d${D}s"
  if mkdir -p "$CG" 2>/dev/null && echo 10000 >"$CG/cpu.cfs_period_us" && echo $((QUOTA * 100)) >"$CG/cpu.cfs_quota_us"; then
    load; HDR; rm -f "$W/rows"
    throttled() { awk '/^nr_periods/{p=$2} /^nr_throttled/{t=$2} END{print p, t}' "$CG/cpu.stat"; }
    quota_row() { local a b; a=$(throttled); wrk_row "$1" "$2" 64; b=$(throttled)
      awk -v a="$a" -v b="$b" -v n="$1" 'BEGIN{ split(a, x, " "); split(b, y, " "); p = y[1]-x[1];
        printf "   %s: quota ran out in %.0f%% of %d periods\n", n, (p > 0 ? 100*(y[2]-x[2])/p : 0), p }'; }
    for r in $(seq "$ROUNDS"); do for s in "${PROXIES[@]}"; do with_proxy "$s" quota_row; done; done
    MEDIANS
  else echo "no cgroup v1 cpu controller at /sys/fs/cgroup/cpu (or not root): (q) skipped"; fi
  CG=
fi

if has z; then
  LEVEL=${LEVEL:-1}
  echo; echo "== (z) gzip at level $LEVEL of a 10 KiB HTML page from one origin: wrk -t1 -c64 -d${D}s -H 'Accept-Encoding: gzip'"; load
  in_use 9005 && { echo "port 9005 is already in use; (z) skipped" >&2; exit 1; }
  head -c 10240 "$root/ARCHITECTURE.md" >"$W/page.html"
  cat >"$W/origin-text.conf" <<EOF
worker_processes 1; daemon off; pid origin-text.pid; error_log origin-text.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; default_type text/html;
  server { listen 127.0.0.1:9005; root $W; location / { try_files /page.html =404; } } }
EOF
  start origin-text 0 nginx -c "$W/origin-text.conf" -p "$W/"; wait_port 9005 || { echo "origin-text failed"; exit 1; }
  one='backends = [{ address = "127.0.0.1:9005" }]'
  sed "s|^backends = .*|$one|" "$here/switchyard.toml" >"$W/switchyard-gzip.toml"
  printf '\n[[routes]]\nupstream = "be"\ncompress = { level = %s }\n' "$LEVEL" >>"$W/switchyard-gzip.toml"
  sed -e 's/server 127.0.0.1:9001; server 127.0.0.1:9002; server 127.0.0.1:9003;/server 127.0.0.1:9005;/' \
      -e "s/^  access_log off;/  access_log off;\\n  gzip on; gzip_comp_level $LEVEL; gzip_min_length 1024; gzip_proxied any; gzip_vary on;/" \
      "$here/nginx-proxy.conf" >"$W/nginx-gzip.conf"
  sed -e '/^  server b[23] /d' -e 's/^  server b1 .*/  server b1 127.0.0.1:9005\n  compression algo gzip\n  compression type text\/html/' \
      "$here/haproxy.cfg" >"$W/haproxy-gzip.cfg"
  GZ=("switchyard 8083 8083 $SY run --config $W/switchyard-gzip.toml")
  command -v haproxy >/dev/null && GZ+=("haproxy 8081 8091 haproxy -f $W/haproxy-gzip.cfg -db")
  GZ+=("nginx 8082 8092 nginx -c $W/nginx-gzip.conf -p $W/")
  # Each proxy's answer, checked once: compressed, and what it weighs.
  gz_check() { local out; out=$(curl -s -H 'Accept-Encoding: gzip' -D - -o "$W/gz-$1.body" "http://127.0.0.1:$2/")
    printf "   %s: %s, %s bytes for %s\n" "$1" "$(tr -d '\r' <<<"$out" | awk -F': ' 'tolower($1)=="content-encoding"{print "content-encoding " $2}' | head -1)" \
      "$(wc -c <"$W/gz-$1.body")" "$(wc -c <"$W/page.html")"; }
  for s in "${GZ[@]}"; do with_proxy "$s" gz_check; done
  HDR; rm -f "$W/rows"
  EXTRA=(-H "Accept-Encoding: gzip")
  for r in $(seq "$ROUNDS"); do for s in "${GZ[@]}"; do with_proxy "$s" h1 64; done; done
  EXTRA=(); MEDIANS
fi

if has e; then
  echo; echo "== (e) workers = 1 vs 2 (Switchyard workers, NGINX worker_processes), both on CPU 1: wrk -t1 -c64 -d${D}s (keep-alive), then -c64 'Connection: close'"; load; HDR
  W1="switchyard-w1 8083 8083 $SY run --config $here/switchyard.toml"
  W2="switchyard-w2 8084 8084 $SY run --config $here/switchyard-w2.toml"
  # NGINX with two worker processes on the same CPU: what a second event loop on one core costs
  # in NGINX's design, as a reference for Switchyard's.
  sed 's/^worker_processes 1;/worker_processes 2;/' "$here/nginx-proxy.conf" >"$W/nginx-w2.conf"
  N1="nginx-w1 8082 8082 nginx -c $here/nginx-proxy.conf -p $W/"
  N2="nginx-w2 8082 8082 nginx -c $W/nginx-w2.conf -p $W/"
  rm -f "$W/rows"
  printf '%s\n' "switchyard-w2 switchyard-w1" "w2-close w1-close" "nginx-w2 nginx-w1" "nginx-w2-close nginx-w1-close" >"$W/pairs"
  for r in $(seq "$ROUNDS"); do
    EXTRA=(); with_proxy "$W1" h1 64; with_proxy "$W2" h1 64; with_proxy "$N1" h1 64; with_proxy "$N2" h1 64
    EXTRA=(-H "Connection: close")
    with_proxy "${W1/switchyard-w1/w1-close}" h1 64; with_proxy "${W2/switchyard-w2/w2-close}" h1 64
    with_proxy "${N1/nginx-w1/nginx-w1-close}" h1 64; with_proxy "${N2/nginx-w2/nginx-w2-close}" h1 64
  done
  EXTRA=(); MEDIANS
fi

mem_row() { # name port: idle RSS after 3 s, then 10,000 idle keep-alive connections
  local name=$1 port=$2 idle ready rss hwm i
  sleep 3; idle=$(mem_kib VmRSS $PIDS)
  taskset -c 0 python3 "$here/idle_conns.py" "127.0.0.1:$port" 10000 --hold 120 >"$W/idle-$name.out" 2>"$W/idle-$name.err" &
  local tool=$!; STARTED+=("$tool")
  for i in $(seq 600); do grep -q '^ready' "$W/idle-$name.out" && break; sleep 0.1; done
  ready=$(awk '/^ready/{print $2, $3}' "$W/idle-$name.out"); sleep 2
  rss=$(mem_kib VmRSS $PIDS); hwm=$(mem_kib VmHWM $PIDS)
  stop "$tool"
  printf "%-16s %12s %10s %10s %14s %12s %14s\n" "$name" "$(mib "$idle")" "${ready% *}" "${ready#* }" "$(mib "$rss")" "$(mib "$hwm")" \
    "$(awk -v a="$idle" -v b="$rss" -v n="${ready% *}" 'BEGIN{ if (n>0) printf "%.1f", (b-a)/n; else print "-" }')"
}
if has f; then
  echo; echo "== (f) memory: RSS idle (3 s after start), then holding 10,000 idle keep-alive client connections (bench/idle_conns.py)"; load
  printf "%-16s %12s %10s %10s %14s %12s %14s\n" proxy idle_RSS_MiB conns_ok conn_errs RSS_10k_MiB peak_MiB KiB_per_conn
  MEM=("switchyard-demo 8086 8086 $SY run --config $here/switchyard-demo.toml")
  [ -n "$JE" ] && MEM+=("sy-demo+jemalloc 8086 8086 env LD_PRELOAD=$JE $SY run --config $here/switchyard-demo.toml")
  for s in "${PROXIES[@]:1}"; do case $s in sy+*) ;; *) MEM+=("$s") ;; esac; done
  for s in "${MEM[@]}"; do with_proxy "$s" mem_row; done
fi

if has p; then
  echo; echo "== (p) pick cost by algorithm and fleet size: cargo bench --bench balancers (criterion, mean ns/pick)"
  (cd "$root" && cargo bench --bench balancers >"$W/criterion.log" 2>&1) || { tail -20 "$W/criterion.log"; }
  python3 - "$root/target/criterion" <<'PY'
import json, os, sys
base = sys.argv[1]
print(f"{'algorithm':<22} {'3':>9} {'100':>9} {'10000':>9} {'10k/3':>7}  within 2x")
for alg in ["round_robin", "weighted_round_robin", "least_connections", "random", "p2c_ewma", "consistent_hash"]:
    v = {}
    for n in ("3", "100", "10000"):
        p = os.path.join(base, f"pick_{alg}", n, "new", "estimates.json")
        try:
            v[n] = json.load(open(p))["mean"]["point_estimate"]
        except OSError:
            v[n] = float("nan")
    r = v["10000"] / v["3"]
    print(f"{alg:<22} {v['3']:>9.1f} {v['100']:>9.1f} {v['10000']:>9.1f} {r:>7.2f}  {'yes' if r <= 2 else 'NO'}")
PY
fi

if has g; then
  echo; echo "== (g1) apply a change to an upstream of 10,000 backends, library: cargo bench --bench apply"
  (cd "$root" && cargo bench --bench apply 2>"$W/apply-build.log") || tail -20 "$W/apply-build.log"

  echo; echo "== (g2) the same, live: POST /update-config every 0.5 s (remove / re-add a backend) while wrk -t1 -c64 -d${D}s loads that upstream"; load
  for p in 9004 8085 5085; do in_use $p && { echo "port $p is already in use; (g2) skipped" >&2; exit 1; }; done
  start origin-any 0 nginx -c "$here/origin-any.nginx.conf" -p "$W/"
  wait_port 9004 || { echo "origin-any failed"; exit 1; }
  python3 - "$W/big.toml" <<'PY'
import sys
b = ", ".join(f'{{ address = "127.0.{i // 250}.{i % 250 + 1}:9004" }}' for i in range(10000))
open(sys.argv[1], "w").write(f'''workers = 1
[admin]
listen = "127.0.0.1:5085"
[[listeners]]
bind = "127.0.0.1:8085"
[upstreams.big]
backends = [{b}]
[log]
access = "off"
''')
PY
  start switchyard-big 1 "$SY" run --config "$W/big.toml"; BIG=$PID
  if wait_port 8085 && wait_port 5085; then
    taskset -c 0 wrk -t1 -c64 -d3s http://127.0.0.1:8085/ >/dev/null 2>&1   # opens the pooled connections
    taskset -c 0 wrk -t1 -c64 -d"${D}s" --latency http://127.0.0.1:8085/ >"$W/wrk-big.txt" 2>&1 & WRK=$!
    sleep 0.5; : >"$W/api-times"
    end=$(( $(date +%s) + D - 1 ))
    k=0
    while [ "$(date +%s)" -lt "$end" ]; do
      if [ $((k % 2)) = 0 ]; then body='{"upstream":"big","remove":["127.0.0.1:9004"]}'
      else body='{"upstream":"big","add":[{"address":"127.0.0.1:9004","weight":1}]}'; fi
      curl -s -o "$W/api-last" -w '%{http_code} %{time_total}\n' -H 'content-type: application/json' \
        -d "$body" http://127.0.0.1:5085/update-config >>"$W/api-times"
      k=$((k + 1)); sleep 0.5
    done
    wait $WRK
    out=$(cat "$W/wrk-big.txt")
    rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    errs=$(awk '/Non-2xx/{s+=$NF} /Socket errors/{gsub(/,/,""); s+=$4+$6+$8+$10} END{print s+0}' <<<"$out")
    p99=$(to_ms "$(awk '$1=="99%"{print $2}' <<<"$out")")
    printf "%-10s %10s %14s %14s %10s %10s %9s\n" changes http_200 api_p50_ms api_max_ms wrk_req/s wrk_errors p99_ms
    sort -k2 -n "$W/api-times" | awk -v rps="$rps" -v errs="$errs" -v p99="$p99" '{n++; if ($1==200) ok++; t[n]=$2*1000}
      END{ printf "%-10s %10s %14.1f %14.1f %10s %10s %9s\n", n, ok+0, t[int(n/2)+1], t[n], rps, errs, p99 }'
    grep -q '^200' "$W/api-times" || echo "(update-config answered: $(head -1 "$W/api-times"); $(head -c 200 "$W/api-last"))"
    echo "(API time is the whole HTTP round trip: parse, validate, compile, swap, and the write-back of the 10,000-line config file with fsync)"
  else
    echo "switchyard-big did not start: $(tail -3 "$W/switchyard-big.log")"
  fi
  stop "$BIG"
fi
echo; WAIT=0; load
