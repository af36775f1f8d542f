#!/usr/bin/env bash
# usage: bench/sched.sh [-m MODES] [-d SECONDS] [-p PROXIES] [-B]
#   What the scheduler does per request behind each proxy, counted by its tracepoints on each CPU
#   (`perf stat -C`): context switches, wake-ups, the IPIs sent to wake a task on the other CPU,
#   and preemptions (reschedule interrupts). For "the same work per request, more CPU": a second
#   worker on the same CPU, or a proxy whose batches are smaller, shows here first.
#   -m MODES     comma-separated: ka (keep-alive), close (Connection: close); default ka
#   -d SECONDS   counted load per proxy and mode (default 6, after a 2 s warm-up)
#   -p PROXIES   comma-separated: switchyard,nginx,haproxy (default: those installed), and
#                switchyard-w2 (workers = 2), nginx-w2 (worker_processes 2), both on CPU 1
#   -B           do not run `cargo build --release` first
#
# Set-up as run.sh: the nginx origins and wrk (64 connections) on CPU 0, the proxy alone on CPU 1.
# Columns per CPU: switches, wake-ups done there (sched_waking), IPIs sent from there, and
# reschedule interrupts taken there (a task woken from the other CPU preempting the running one).
# Needs perf (apt-get install linux-perf) and tracefs.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
MODES=ka; D=6; PROX=; BUILD=1
. "$here/counted-setup.sh"
EV=sched:sched_switch,sched:sched_waking,ipi:ipi_send_cpu,irq_vectors:reschedule_entry

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); switchyard $(git -C "$root" rev-parse --short HEAD 2>/dev/null)$(git -C "$root" diff --quiet 2>/dev/null || echo '+dirty'); bench/sched.sh -m $MODES -d $D -p $PROX"
printf '| mode | proxy | req/s | CPU 1: switches | wake-ups | IPIs sent | preempted | CPU 0: switches | wake-ups | IPIs sent | preempted |\n'
printf '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for mode in ${MODES//,/ }; do
  EX=(); [ "$mode" = close ] && EX=(-H "Connection: close")
  for p in ${PROX//,/ }; do
    start_proxy "$p" || continue
    taskset -c 0 wrk -t1 -c64 -d2s "${EX[@]}" "http://127.0.0.1:$port/" >/dev/null 2>&1
    perf stat -x, -e $EV -C 1 -o "$W/c1.txt" -- sleep "$D" >/dev/null 2>&1 & S1=$!
    perf stat -x, -e $EV -C 0 -o "$W/c0.txt" -- sleep "$D" >/dev/null 2>&1 & S0=$!
    out=$(taskset -c 0 wrk -t1 -c64 -d"${D}s" "${EX[@]}" "http://127.0.0.1:$port/" 2>&1)
    wait $S1 $S0
    n=$(awk '/requests in/{print $1}' <<<"$out")
    per() { awk -F, -v n="${n:-0}" '/^[0-9]/{ v[$3] = $1 } END {
      printf "%.4f | %.4f | %.4f | %.4f", v["sched:sched_switch"] / n, v["sched:sched_waking"] / n,
        v["ipi:ipi_send_cpu"] / n, v["irq_vectors:reschedule_entry"] / n }' "$1"; }
    if [ "${n:-0}" -gt 0 ]; then
      echo "| $mode | $p | $(awk -v n="$n" -v d="$D" 'BEGIN{printf "%.0f", n/d}') | $(per "$W/c1.txt") | $(per "$W/c0.txt") |"
    else
      echo "| $mode | $p | - | | | | | | | | |"
    fi
    kill $P; wait $P 2>/dev/null; sleep 0.5
  done
done
