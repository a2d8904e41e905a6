#!/usr/bin/env bash
# Installs the real MCP SDK peers used by the integration tests.
#
#   tests/peers/install.sh            # all peers: py1 py2 node
#   tests/peers/install.sh py1 node   # only some
#
# Target: $PEERS_DIR (default <repo>/target/peers). Idempotent: each peer has a
# stamp file holding its exact spec; a second run with the same pins is instant.
set -uo pipefail

# ---- pinned versions (the ones selfcheck.sh was run against) ----------------
PY1_MCP="mcp==1.30.0"            # latest 1.x on PyPI
PY2_MCP="mcp==2.3.0"             # latest 2.x on PyPI
# TS SDK + zod versions are pinned exactly in node-package.json / node-package-lock.json.

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$REPO/target/peers}"
PYTHON="${PYTHON:-python3}"
NPM="${NPM:-npm}"

# run CMD...: runs it, and on failure says exactly what failed and how to redo it.
run() {
  "$@" && return 0
  local rc=$?
  {
    echo
    echo "install.sh: FAILED (exit $rc): $*"
    echo "install.sh: to retry by hand:  (cd $(pwd) && $*)"
  } >&2
  exit 1
}

stamp_ok() { [[ -f "$PEERS_DIR/$1.stamp" && "$(cat "$PEERS_DIR/$1.stamp")" == "$2" ]]; }
stamp_write() { printf '%s' "$2" >"$PEERS_DIR/$1.stamp"; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

# refresh SRC DST: DST becomes a copy of SRC, by rename: a peer that starts while another test
# runs this reads the old file or the new one, never one `cp` has truncated and not yet
# written (a TypeScript client then imported an sdk.mjs without the class it needs: "is not a
# constructor"). Unchanged files are left alone.
refresh() {
  cmp -s "$1" "$2" && return 0
  run cp "$1" "$2.tmp.$$"
  run mv -f "$2.tmp.$$" "$2"
}

install_py() { # name spec lockfile
  local name=$1 spec=$2 lock="$HERE/$3"
  local want="$spec lock=$(hash_of "$lock") py=$("$PYTHON" -V 2>&1)"
  if stamp_ok "$name" "$want"; then echo "peers: $name up to date ($spec)"; return; fi
  echo "peers: installing $name ($spec) into $PEERS_DIR/$name"
  rm -rf "${PEERS_DIR:?}/$name"
  run "$PYTHON" -m venv "$PEERS_DIR/$name"
  run "$PEERS_DIR/$name/bin/python" -m pip install -q --disable-pip-version-check -c "$lock" "$spec"
  run "$PEERS_DIR/$name/bin/python" -c "import mcp, uvicorn, starlette"
  stamp_write "$name" "$want"
}

install_node() {
  local dir="$PEERS_DIR/node"
  local want="pkg=$(hash_of "$HERE/node-package.json" "$HERE/node-package-lock.json") node=$(node --version 2>&1)"
  mkdir -p "$dir"
  # sdk.mjs must live next to node_modules so its bare imports resolve; always refresh it.
  refresh "$HERE/sdk.mjs" "$dir/sdk.mjs"
  if stamp_ok node "$want"; then echo "peers: node up to date"; return; fi
  echo "peers: installing node peer into $dir"
  rm -rf "$dir/node_modules"
  run cp "$HERE/node-package.json" "$dir/package.json"
  run cp "$HERE/node-package-lock.json" "$dir/package-lock.json"
  (cd "$dir" && run "$NPM" ci --no-audit --no-fund --loglevel=error) || exit 1
  run node "$dir/sdk.mjs"
  stamp_write node "$want"
}

peers=("$@")
[[ ${#peers[@]} -eq 0 ]] && peers=(py1 py2 node)
run mkdir -p "$PEERS_DIR"
# One installer at a time (tests in parallel processes may all ask at once).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$PEERS_DIR/.install.lock"
  flock 9
fi
for p in "${peers[@]}"; do
  case "$p" in
    py1) install_py py1 "$PY1_MCP" py1.lock.txt ;;
    py2) install_py py2 "$PY2_MCP" py2.lock.txt ;;
    node) install_node ;;
    *) echo "install.sh: unknown peer '$p' (want: py1 py2 node)" >&2; exit 2 ;;
  esac
done
echo "peers: ok ($PEERS_DIR)"
