# Sourced by auth_cost.sh, route_cost.sh and tcp_cost.sh: the CPU a proxy used.
# ticks PID: user + system clock ticks of a process and its children (NGINX's worker is the
# master's child). per_request A B N: the microseconds of CPU per request between two readings.
HZ=$(getconf CLK_TCK)
tree() { local p=$1 c; echo "$p"; for c in $(pgrep -P "$p"); do tree "$c"; done; }
ticks() { local t=0 p; for p in $(tree "$1"); do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo $t; }
per_request() { awk -v a="$1" -v b="$2" -v n="$3" -v hz="$HZ" 'BEGIN{printf "%.2f", (b-a)/hz*1e6/n}'; }
