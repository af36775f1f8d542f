#!/usr/bin/env bash
# usage: bench/tls_handshakes.sh [SECONDS]
#
# Full TLS handshakes per second on one core: Switchyard (workers = 1) and NGINX
# (worker_processes 1), each alone on CPU 1, the same ECDSA P-256 certificate, no session
# resumption; `openssl s_time -new` on CPU 0 makes a new connection and a full handshake each
# time, sends no request. Prints handshakes/s and the server's own CPU time per handshake
# (utime+stime from /proc), which stays comparable even when the single-threaded client is the
# bottleneck. Needs openssl, nginx, taskset and a release build (cargo build --release).
set -eu
D=${1:-10}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
SY="$root/target/release/switchyard"
W=/tmp/switchyard-tls-bench
HZ=$(getconf CLK_TCK)
mkdir -p "$W"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$W/key.pem" -out "$W/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost 2>/dev/null

cat > "$W/switchyard.toml" <<EOF
workers = 1
[admin]
listen = "127.0.0.1:0"
[[listeners]]
bind = "127.0.0.1:18443"
[listeners.tls]
certificates = [{ cert = "$W/cert.pem", key = "$W/key.pem" }]
[upstreams.none]
backends = [{ address = "127.0.0.1:9" }]
[log]
access = "off"
level = "warn"
EOF
cat > "$W/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:18444 ssl;
    ssl_certificate $W/cert.pem;
    ssl_certificate_key $W/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    return 200 "ok\n";
  }
}
EOF

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
taskset -c 1 "$SY" run -c "$W/switchyard.toml" 2>"$W/switchyard.log" &
pids+=($!)
taskset -c 1 nginx -c "$W/nginx.conf" -p "$W" &
pids+=($!)
sleep 1

# CPU ticks used so far by a process and its children (NGINX's worker is a child).
ticks() {
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

printf '%-11s %-8s %14s %18s\n' server version handshakes/s "server CPU µs/hs"
for v in tls1_3 tls1_2; do
  for s in "switchyard 18443 ${pids[0]}" "nginx 18444 ${pids[1]}"; do
    set -- $s
    before=$(ticks "$3")
    out=$(taskset -c 0 openssl s_time -connect "127.0.0.1:$2" -new -time "$D" "-$v" 2>&1 || true)
    after=$(ticks "$3")
    line=$(echo "$out" | grep 'real seconds' | head -1)
    n=$(echo "$line" | awk '{print $1}')
    t=$(echo "$line" | awk '{print $4}')
    if [ -z "$n" ] || [ "$n" = 0 ]; then echo "$1 $v: no handshakes: $out" >&2; continue; fi
    awk -v name="$1" -v v="$v" -v n="$n" -v t="$t" -v c="$((after - before))" -v hz="$HZ" \
      'BEGIN { printf "%-11s %-8s %14.0f %18.0f\n", name, v, n / t, c / hz / n * 1e6 }'
  done
done
