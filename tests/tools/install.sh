#!/usr/bin/env bash
# Installs the reference tools the observability tests judge mcpflip with:
#
#   prom      Python `prometheus_client` in a venv: its strict OpenMetrics parser
#             and its Prometheus text-format parser read every scrape.
#   promtool  Prometheus's own rule checker, taken from Debian's `prometheus`
#             package: the package is downloaded and unpacked under target/
#             (no service is installed or started, no root needed once apt's
#             lists exist).
#
#   tests/tools/install.sh                 # both
#   tests/tools/install.sh prom            # only one
#
# Target: $TOOLS_DIR (default <repo>/target/tools). Idempotent: each tool has a
# stamp file holding its exact spec; a second run with the same pins is instant.
set -uo pipefail

PROM_CLIENT="prometheus_client==0.26.0"
PROMETHEUS_DEB="prometheus"      # Debian's package; promtool is /usr/bin/promtool in it

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$REPO/target/tools}"
PYTHON="${PYTHON:-python3}"

run() {
  "$@" && return 0
  local rc=$?
  {
    echo
    echo "tools/install.sh: FAILED (exit $rc): $*"
    echo "tools/install.sh: to retry by hand:  (cd $(pwd) && $*)"
  } >&2
  exit 1
}

stamp_ok() { [[ -f "$TOOLS_DIR/$1.stamp" && "$(cat "$TOOLS_DIR/$1.stamp")" == "$2" ]]; }
stamp_write() { printf '%s' "$2" >"$TOOLS_DIR/$1.stamp"; }

install_prom() {
  local want="$PROM_CLIENT py=$("$PYTHON" -V 2>&1)"
  if stamp_ok prom "$want"; then echo "tools: prom up to date ($PROM_CLIENT)"; return; fi
  echo "tools: installing $PROM_CLIENT into $TOOLS_DIR/prom"
  rm -rf "${TOOLS_DIR:?}/prom"
  run "$PYTHON" -m venv "$TOOLS_DIR/prom"
  run "$TOOLS_DIR/prom/bin/python" -m pip install -q --disable-pip-version-check "$PROM_CLIENT"
  run "$TOOLS_DIR/prom/bin/python" -c "import prometheus_client.openmetrics.parser, prometheus_client.parser"
  stamp_write prom "$want"
}

install_promtool() {
  local dir="$TOOLS_DIR/promtool"
  if [[ -x "$dir/usr/bin/promtool" ]] && stamp_ok promtool "$PROMETHEUS_DEB"; then
    echo "tools: promtool up to date ($("$dir/usr/bin/promtool" --version 2>&1 | head -1))"
    return
  fi
  command -v apt-get >/dev/null 2>&1 || { echo "tools/install.sh: promtool needs apt-get (Debian's $PROMETHEUS_DEB package)" >&2; exit 1; }
  echo "tools: unpacking promtool from Debian's $PROMETHEUS_DEB package into $dir"
  rm -rf "${dir:?}" "$TOOLS_DIR/deb"
  run mkdir -p "$TOOLS_DIR/deb"
  # apt-get download needs the package lists; on a fresh machine (root) refresh them once.
  if ! (cd "$TOOLS_DIR/deb" && apt-get download "$PROMETHEUS_DEB" >/dev/null 2>&1); then
    if [[ "$(id -u)" -eq 0 ]]; then run apt-get update -qq; fi
    (cd "$TOOLS_DIR/deb" && run apt-get download "$PROMETHEUS_DEB")
  fi
  local deb
  deb="$(ls "$TOOLS_DIR"/deb/*.deb 2>/dev/null | head -1)"
  [[ -n "$deb" ]] || { echo "tools/install.sh: apt-get download $PROMETHEUS_DEB left no .deb" >&2; exit 1; }
  run dpkg-deb -x "$deb" "$dir"
  run "$dir/usr/bin/promtool" --version
  rm -rf "$TOOLS_DIR/deb"
  stamp_write promtool "$PROMETHEUS_DEB"
}

tools=("$@")
[[ ${#tools[@]} -eq 0 ]] && tools=(prom promtool)
run mkdir -p "$TOOLS_DIR"
# One installer at a time (tests in parallel processes may all ask at once).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$TOOLS_DIR/.install.lock"
  flock 9
fi
for t in "${tools[@]}"; do
  case "$t" in
    prom) install_prom ;;
    promtool) install_promtool ;;
    *) echo "tools/install.sh: unknown tool '$t' (want: prom promtool)" >&2; exit 2 ;;
  esac
done
echo "tools: ok ($TOOLS_DIR)"
