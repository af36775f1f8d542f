#!/usr/bin/env bash
# usage: bench/headers-configs.sh DIR
#   Writes DIR/nginx-headers.conf and DIR/haproxy-headers.cfg: bench/nginx-proxy.conf and
#   bench/haproxy.cfg adding the request and response headers Switchyard adds by contract
#   (X-Forwarded-For appended, X-Forwarded-Proto, X-Forwarded-Host, an X-Request-Id made per
#   request, sent upstream and echoed to the client). NGINX also passes Host on as it came,
#   as Switchyard and HAProxy do (NGINX's default sends the upstream's name). Used by run.sh -H
#   and instr.sh -p nginx+hdrs,haproxy+hdrs: the same work per request for every proxy.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$1
hx='  option forwardfor\n  http-request set-header X-Forwarded-Proto http\n  http-request set-header X-Forwarded-Host %[req.hdr(host)]\n  unique-id-format %[uuid()]\n  unique-id-header X-Request-Id\n  http-response set-header X-Request-Id %[unique-id]'
sed "s|^\(  default_backend be\)\$|\1\n$hx|" "$here/haproxy.cfg" >"$out/haproxy-headers.cfg"
nx='      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      proxy_set_header X-Forwarded-Proto $scheme;\n      proxy_set_header Host $http_host;\n      proxy_set_header X-Forwarded-Host $http_host;\n      proxy_set_header X-Request-Id $rid;\n      add_header X-Request-Id $rid always;'
sed "s|^\(      proxy_set_header Connection \"\";\)\$|\1\n$nx|; s|^\(  upstream be {\)\$|  map \$http_x_request_id \$rid { \"\" \$request_id; default \$http_x_request_id; }\n\1|" \
  "$here/nginx-proxy.conf" >"$out/nginx-headers.conf"
