#!/usr/bin/env bash
# Runs every test. Installs what the tests need first (as root, on Debian): protoc for gRPC test
# stubs, Chromium and playwright-core for the web UI test, etcd for cluster tests, promtool for
# the metrics test. Safe to run again: installed things are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v protoc   >/dev/null || need+=(protobuf-compiler)
# etcd-client's protos import google/protobuf/*.proto, which only libprotobuf-dev ships
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v chromium >/dev/null || need+=(chromium)
command -v etcd     >/dev/null || need+=(etcd-server)
command -v promtool >/dev/null || need+=(prometheus)
command -v node     >/dev/null || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  else
    echo "missing packages: ${need[*]} (run as root or install them)" >&2
  fi
fi
# etcd and prometheus start services when installed on some systems; tests start their own.
systemctl stop etcd prometheus 2>/dev/null || true
if [ -f tests/ui/package.json ] && [ ! -d tests/ui/node_modules ]; then
  (cd tests/ui && npm ci --no-audit --no-fund)
fi

cargo test
