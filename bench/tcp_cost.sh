#!/usr/bin/env bash
# usage: bench/tcp_cost.sh [ROUNDS]
# Layer 4: Switchyard's `mode = "tcp"` listener beside HAProxy's `mode tcp` and NGINX's `stream`
# proxy, each relaying to the three origins round robin, in the same run. HTTP/1.1 is what the
# bytes happen to be: the proxies do not read it. Two loads:
#   ka     wrk -t1 -c64 over keep-alive connections: the relay's cost per small exchange;
#   close  the same with `Connection: close`: a client connection, a backend connect and a
#          balancing decision per request.
# As run.sh: origins and wrk on CPU 0, the proxy alone on CPU 1, one worker/thread each, 2 s
# warm-up then 6 s measured, proxies interleaved within each round. Prints req/s and CPU
# microseconds per request (user + system of the proxy's processes). Needs a release build,
# haproxy, nginx with its stream module (Debian: libnginx-mod-stream) and wrk.
set -u
here=$(cd "$(dirname "$0")" && pwd)
SY="$here/../target/release/switchyard"
ROUNDS=${1:-3}
W=/tmp/switchyard-tcp-cost; rm -rf "$W"; mkdir -p "$W"
BACKENDS='127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003'

cat >"$W/sy.toml" <<EOF
workers = 1
[admin]
listen = "127.0.0.1:5084"
[[listeners]]
bind = "127.0.0.1:8084"
mode = "tcp"
upstream = "be"
[upstreams.be]
backends = [$(for b in $BACKENDS; do printf '{ address = "%s" }, ' "$b"; done)]
[log]
access = "off"
EOF
cat >"$W/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 10500
  no strict-limits   # the hard fd limit here is 20000
defaults
  mode tcp
  timeout connect 2s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:8085
  default_backend be
backend be
  balance roundrobin
$(i=0; for b in $BACKENDS; do i=$((i+1)); echo "  server b$i $b"; done)
EOF
cat >"$W/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
daemon off;
pid nginx-tcp.pid;
error_log nginx-tcp.err warn;
worker_rlimit_nofile 20000;
events { worker_connections 19000; }
stream {
  upstream be {
$(for b in $BACKENDS; do echo "    server $b;"; done)
  }
  server {
    listen 127.0.0.1:8086;
    proxy_pass be;
    proxy_connect_timeout 2s;
    proxy_timeout 60s;
  }
}
EOF
"$SY" check --config "$W/sy.toml" >/dev/null || exit 1
haproxy -c -q -f "$W/haproxy.cfg" || exit 1
nginx -t -q -c "$W/nginx.conf" -p "$W/" || exit 1

taskset -c 0 nginx -c "$here/origins.nginx.conf" -p "$W/" & ORIGINS=$!
trap 'kill $ORIGINS 2>/dev/null' EXIT
sleep 1
. "$here/cpu-ticks.sh"
start() {
  case $1 in
    switchyard) taskset -c 1 "$SY" run --config "$W/sy.toml" >"$W/sy.log" 2>&1 & P=$!; PORT=8084 ;;
    haproxy) taskset -c 1 haproxy -f "$W/haproxy.cfg" -db >"$W/haproxy.log" 2>&1 & P=$!; PORT=8085 ;;
    nginx) taskset -c 1 nginx -c "$W/nginx.conf" -p "$W/" & P=$!; PORT=8086 ;;
  esac
}
echo "# $(date -u '+%F %H:%M UTC'); switchyard $(git -C "$here" rev-parse --short HEAD); $(haproxy -v | head -1 | cut -d' ' -f1-3); $(nginx -v 2>&1)"
for load in ka close; do
  hdr=(); [ "$load" = close ] && hdr=(-H "Connection: close")
  for r in $(seq "$ROUNDS"); do
    for c in switchyard haproxy nginx; do
      start "$c"
      sleep 1
      taskset -c 0 wrk -t1 -c64 -d2s "${hdr[@]}" "http://127.0.0.1:$PORT/" >/dev/null
      a=$(ticks "$P")
      out=$(taskset -c 0 wrk -t1 -c64 -d6s --latency "${hdr[@]}" "http://127.0.0.1:$PORT/")
      b=$(ticks "$P")
      n=$(awk '/requests in/{print $1}' <<<"$out"); rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
      p99=$(awk '$1=="99%"{print $2}' <<<"$out")
      errs=$(awk '/Socket errors|Non-2xx/{print}' <<<"$out" | tr -s ' ' | tr '\n' ';')
      printf "%-6s %-10s round %s: %10s req/s %8s us/request  p99 %8s%s\n" "$load" "$c" "$r" "$rps" \
        "$(per_request "$a" "$b" "$n")" \
        "$p99" "${errs:+  $errs}"
      kill "$P"; wait "$P" 2>/dev/null; sleep 0.5
    done
  done
done
