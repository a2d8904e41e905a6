#!/usr/bin/env bash
# Installs the anchors of `cargo run -p mcpflip-bench --release` from Debian's
# packages: nginx, HAProxy, Caddy (the proxies mcpflip is compared with), wrk (the
# second load generator of W1), h2load (for HTTP/2 by hand) and perf (profiles).
# Idempotent: installs only what is missing. Needs root (or sudo) and apt.
set -euo pipefail

# binary -> Debian package
declare -A PKG=(
  [nginx]=nginx
  [haproxy]=haproxy
  [caddy]=caddy
  [wrk]=wrk
  [h2load]=nghttp2-client
  [perf]=linux-perf
)

missing=()
for bin in nginx haproxy caddy wrk h2load perf; do
  if ! command -v "$bin" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$bin" ]; then
    missing+=("${PKG[$bin]}")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "bench/setup.sh: nginx, haproxy, caddy, wrk, h2load and perf are installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "bench/setup.sh: need root to install: ${missing[*]}" >&2
    echo "  run as root: apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "bench/setup.sh: apt-get not found; install these packages by hand: ${missing[*]}" >&2
  exit 1
fi

echo "bench/setup.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -q; then
  echo "bench/setup.sh: apt-get update failed (network? proxy?)." >&2
  echo "  rerun: $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
# policy-rc.d 101: the packages must not start their system services; the bench
# starts its own instances on ephemeral loopback ports.
restore_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  restore_policy=1
fi
status=0
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" || status=$?
if [ -n "$restore_policy" ]; then
  $SUDO rm -f /usr/sbin/policy-rc.d
fi
if [ $status -ne 0 ]; then
  echo "bench/setup.sh: apt-get install failed (exit $status)." >&2
  echo "  rerun: $SUDO apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "bench/setup.sh: done"
