#!/usr/bin/env bash
# usage: bench/syscalls.sh [-m MODES] [-d SECONDS] [-p PROXIES] [-B]
#   System calls per request of each proxy, by call, counted by the kernel's syscall tracepoints
#   (`perf stat -e syscalls:sys_enter_*` on the proxy's worker): unlike strace, which stops the
#   process at every call and so changes how much each epoll_wait batches, this leaves the proxy
#   running at full speed, so the counts are those of the benchmark.
#   -m MODES     comma-separated: ka (keep-alive), close (Connection: close); default ka,close
#   -d SECONDS   counted load per mode (default 5, after a 2 s warm-up)
#   -p PROXIES   comma-separated: switchyard,nginx,haproxy (default: those installed), and
#                switchyard-w2 (workers = 2, bench/switchyard-w2.toml)
#   -B           do not run `cargo build --release` first
#
# Set-up as run.sh: the nginx origins and wrk (64 connections) on CPU 0, the proxy alone on CPU 1
# with its run.sh configuration. Needs perf (apt-get install linux-perf) and tracefs.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
MODES=ka,close; D=5; PROX=; BUILD=1
. "$here/counted-setup.sh"
CALLS="accept accept4 read recvfrom readv recvmsg write sendto writev sendmsg close shutdown epoll_wait epoll_pwait epoll_ctl setsockopt getsockopt"
EV=(); for c in $CALLS; do EV+=(-e "syscalls:sys_enter_$c"); done

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); switchyard $(git -C "$root" rev-parse --short HEAD 2>/dev/null)$(git -C "$root" diff --quiet 2>/dev/null || echo '+dirty'); bench/syscalls.sh -m $MODES -d $D -p $PROX"
printf '| mode | proxy | requests | syscalls per request | by call |\n|---|---|---:|---:|---|\n'
for mode in ${MODES//,/ }; do
  EX=(); [ "$mode" = close ] && EX=(-H "Connection: close")
  for p in ${PROX//,/ }; do
    # NGINX with two worker processes would be counted in one of them only.
    [ "$p" = nginx-w2 ] && { echo "nginx-w2: not counted here (one worker process is traced)" >&2; continue; }
    start_proxy "$p" || continue
    # NGINX serves from its worker process; Switchyard and HAProxy from threads of one process.
    T=$P; c=$(pgrep -P $P | head -1); [ -n "$c" ] && T=$c
    taskset -c 0 wrk -t1 -c64 -d2s "${EX[@]}" "http://127.0.0.1:$port/" >/dev/null 2>&1
    perf stat --per-thread "${EV[@]}" -p "$T" -o "$W/perf-$p.txt" -- sleep "$D" 2>/dev/null & SP=$!
    out=$(taskset -c 0 wrk -t1 -c64 -d"${D}s" "${EX[@]}" "http://127.0.0.1:$port/" 2>&1)
    wait $SP
    n=$(awk '/requests in/{print $1}' <<<"$out")
    awk -v n="${n:-0}" -v mode="$mode" -v p="$p" '
      # One line per thread and call: "THREAD-TID COUNT syscalls:sys_enter_CALL" (or "<not
      # counted>" for a thread that made none); summed over threads, in the order first seen.
      { for (i = 2; i <= NF; i++) if ($i ~ /^syscalls:sys_enter_/) {
          c = $(i - 1); gsub(/,/, "", c); if (c !~ /^[0-9]+$/) next
          name = $i; sub(/syscalls:sys_enter_/, "", name)
          if (!(name in sum)) order[++k] = name
          sum[name] += c; t += c } }
      END { if (n <= 0) { print "| " mode " | " p " | - | - | |"; exit }
            for (j = 1; j <= k; j++) if (sum[order[j]] > 0) by = by sprintf("%s %.2f, ", order[j], sum[order[j]] / n)
            sub(/, $/, "", by); printf "| %s | %s | %d | %.2f | %s |\n", mode, p, n, t / n, by }' "$W/perf-$p.txt"
    kill $P; wait $P 2>/dev/null; sleep 0.5
  done
done
