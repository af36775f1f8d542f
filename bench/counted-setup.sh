# Sourced by bench/syscalls.sh and bench/sched.sh once their defaults are set (MODES, D, PROX,
# BUILD; `here` and `root` the bench and project directories): parses their common options
# (usage: lines 2-13 of the script), checks the tools, builds, makes the work directory $W with
# its cleanup, and starts the nginx origins on CPU 0.
while getopts m:d:p:Bh o; do
  case $o in
    m) MODES=$OPTARG ;; d) D=$OPTARG ;; p) PROX=$OPTARG ;; B) BUILD=0 ;;
    *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
for t in perf wrk nginx taskset; do
  command -v $t >/dev/null || { echo "missing: $t" >&2; exit 1; }
done
[ -n "$PROX" ] || { PROX=switchyard,nginx; command -v haproxy >/dev/null && PROX=$PROX,haproxy; }
[ "$BUILD" = 1 ] && (cd "$root" && cargo build --release -q)
W=$(mktemp -d)
PIDS=()
cleanup() { local p; for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$W"; }
trap cleanup EXIT; trap 'exit 130' INT TERM
wait_port() { local i; for i in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

taskset -c 0 nginx -c "$here/origins.nginx.conf" -p "$W/" >"$W/origins.log" 2>&1 & PIDS+=($!)
wait_port 9001 && wait_port 9003 || { echo "origins failed"; exit 1; }
sed 's/^worker_processes 1;/worker_processes 2;/' "$here/nginx-proxy.conf" >"$W/nginx-w2.conf"

# start_proxy NAME: starts that proxy alone on CPU 1 with its run.sh configuration and waits
# for its port; sets P (its pid) and port. Returns 1 (with a message) if it did not start.
start_proxy() {
  local cmd
  case $1 in
    switchyard) port=8083; cmd=("$root/target/release/switchyard" run --config "$here/switchyard.toml") ;;
    # Two workers (bench/switchyard-w2.toml), each with its own listener socket (SO_REUSEPORT).
    switchyard-w2) port=8084; cmd=("$root/target/release/switchyard" run --config "$here/switchyard-w2.toml") ;;
    nginx) port=8082; cmd=(nginx -c "$here/nginx-proxy.conf" -p "$W/") ;;
    nginx-w2) port=8082; cmd=(nginx -c "$W/nginx-w2.conf" -p "$W/") ;;
    haproxy) port=8081; cmd=(haproxy -f "$here/haproxy.cfg" -db) ;;
    *) echo "unknown proxy $1" >&2; return 1 ;;
  esac
  taskset -c 1 "${cmd[@]}" >"$W/$1.log" 2>&1 & P=$!; PIDS+=($P)   # so an interrupted run leaves no proxy on CPU 1
  wait_port $port || { echo "$1 did not start: $(tail -3 "$W/$1.log")"; kill $P; return 1; }
}
