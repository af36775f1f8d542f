#!/usr/bin/env bash
# usage: bench/logging_cost.sh [-d SECONDS] [-r ROUNDS]
#   The cost of the JSON access log and of the metrics counters on the hot path: the same
#   Switchyard binary with `[log] access = "off"` and with `access = "json"` (written to
#   /dev/null, so the measurement is the formatting and the hand-off to the writer thread, not
#   disk speed), side by side in one run of ../shared/peerbench/run.sh (proxy alone on CPU 1).
#   Metrics counters cannot be switched off (they are plain atomics on the backend state); their
#   cost is inside both rows.
set -u
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/.." && pwd)
D=10; R=3
while getopts d:r: o; do case $o in d) D=$OPTARG ;; r) R=$OPTARG ;; *) sed -n '2,8p' "$0"; exit 2 ;; esac; done
peer="$root/../shared/peerbench/run.sh"
[ -x "$peer" ] || { echo "needs ../shared/peerbench/run.sh"; exit 1; }
bin="$root/target/release/switchyard"
[ -x "$bin" ] || (cd "$root" && cargo build --release)
for r in $(seq "$R"); do
  echo "== round $r"
  bash "$peer" -d "$D" -c 64 \
    "log-off=8085=$bin run --config $here/switchyard-log-off.toml" \
    "log-json=8086=$bin run --config $here/switchyard-log-json.toml" 2>&1 | grep -E "^(proxy|log-)"
done
