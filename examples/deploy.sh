#!/usr/bin/env bash
# Blue-green deploy of an MCP server behind mcpflip.
#
# The guide's sequence was: start green, curl-probe the MCP handshake, flip the
# nginx upstream, `sleep 120` for the SSE sessions, stop blue, verify, and roll
# back by hand. Here the probe, flip, drain (until blue's last session ends, not
# a fixed sleep), watch and rollback are one `mcpflip ctl deploy`.
#
#   examples/deploy.sh record SLOT RELEASE  remember that SLOT runs RELEASE now (once, for the
#                                           release that served before the first deploy)
#   examples/deploy.sh deploy RELEASE       start RELEASE in the idle slot and deploy it
#   examples/deploy.sh rollback             restart the previous release in its slot and flip back
#
# The first time: `record blue v1` (or CURRENT_RELEASE=v1 on the first deploy), so that a
# rollback right after the first deploy knows what blue ran.
#
# How your slots start and stop is yours to say (systemd template units by default):
#   START_SLOT   command run with SLOT and RELEASE in the environment
#                (default: systemctl start "mcp-server@$SLOT")
#   STOP_SLOT    command run with SLOT in the environment
#                (default: systemctl stop "mcp-server@$SLOT")
#   MCPFLIP      the mcpflip binary (default: mcpflip on PATH)
#   MCPFLIP_SOCKET  the control socket (default: the [control] socket of MCPFLIP_CONFIG,
#                   else of config/mcpflip.toml)
#   SLOTS        the two slot names (default: "blue green")
#   STATE_DIR    where the release each slot runs is remembered (default: /var/lib/mcpflip)
#   CURRENT_RELEASE  the release the active slot runs, recorded on a deploy when none is
#                yet (the same as `record`)
#   READY_TRIES  probes of the new slot before giving up, one a second (default: 30)
#
# Exit 0: the new release serves and the old slot was stopped once drained.
# Exit 1: the new release was refused by its probe or rolled back; the old one
# still serves and the new slot is stopped again.
set -euo pipefail

MCPFLIP="${MCPFLIP:-mcpflip}"
# The defaults need systemd; remember whether the caller chose the commands.
DEFAULT_COMMANDS=$([[ -n "${START_SLOT:-}" && -n "${STOP_SLOT:-}" ]] && echo no || echo yes)
START_SLOT="${START_SLOT:-systemctl start \"mcp-server@\$SLOT\"}"
STOP_SLOT="${STOP_SLOT:-systemctl stop \"mcp-server@\$SLOT\"}"
read -r SLOT_A SLOT_B <<<"${SLOTS:-blue green}"
STATE_DIR="${STATE_DIR:-/var/lib/mcpflip}"
READY_TRIES="${READY_TRIES:-30}"

say() { printf '%s deploy.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The default START_SLOT/STOP_SLOT are systemd template units: refuse at once,
# before touching anything, on a machine where systemd does not run.
# (SYSTEMD_RUN_DIR exists for tests; systemd creates /run/systemd/system at boot.)
need_slot_commands() {
  [[ "$DEFAULT_COMMANDS" == yes ]] || return 0
  if command -v systemctl >/dev/null && [[ -d "${SYSTEMD_RUN_DIR:-/run/systemd/system}" ]]; then
    return 0
  fi
  say "START_SLOT and STOP_SLOT default to systemd (systemctl start \"mcp-server@\$SLOT\"),"
  say "and systemd does not run here. Set both to the commands that start and stop a slot, e.g."
  say "  START_SLOT='docker run -d --name mcp-\$SLOT -p \$PORT:3000 mcp:\$RELEASE'"
  say "  STOP_SLOT='docker rm -f mcp-\$SLOT'"
  exit 2
}
ctl() { "$MCPFLIP" ctl "$@"; }
start_slot() { SLOT="$1" RELEASE="$2" bash -c "$START_SLOT"; }
stop_slot() { SLOT="$1" bash -c "$STOP_SLOT"; }

# The slot that serves now, read from `status`.
active_slot() {
  ctl --json status | sed -n 's/.*"active":"\([^"]*\)".*/\1/p'
}

other_slot() { if [[ "$1" == "$SLOT_A" ]]; then echo "$SLOT_B"; else echo "$SLOT_A"; fi; }

# Waits until SLOT's process answers (instead of the guide's curl loop). A slot
# that answers but fails the probe is left to `deploy`, which refuses it with the steps.
wait_ready() {
  local slot=$1 i out
  for ((i = 1; i <= READY_TRIES; i++)); do
    out=$(ctl --json probe "$slot" 2>&1) && return 0
    case "$out" in
      *"(connect)"* | *"probe timeout"*) sleep 1 ;;
      *) return 0 ;;
    esac
  done
  say "$slot did not come up within ${READY_TRIES}s:"
  ctl probe "$slot" >&2 || true
  return 1
}

# Remembers that SLOT runs RELEASE (what `rollback` restarts).
record() {
  local slot=$1 release=$2
  [[ "$slot" == "$SLOT_A" || "$slot" == "$SLOT_B" ]] || { say "no slot $slot (SLOTS is \"$SLOT_A $SLOT_B\")"; exit 2; }
  mkdir -p "$STATE_DIR"
  echo "$release" >"$STATE_DIR/release.$slot"
  say "recorded: $slot runs $release"
}

deploy() {
  local release=$1 old new
  need_slot_commands
  old=$(active_slot)
  [[ -n "$old" ]] || { say "no slot is active; check \`mcpflip ctl status\`"; exit 1; }
  new=$(other_slot "$old")
  mkdir -p "$STATE_DIR"
  if [[ ! -f "$STATE_DIR/release.$old" ]]; then
    if [[ -n "${CURRENT_RELEASE:-}" ]]; then
      record "$old" "$CURRENT_RELEASE"
    else
      say "warning: no release recorded for $old, so a rollback cannot restart it;"
      say "  run \`$0 record $old RELEASE\` (or set CURRENT_RELEASE) to record it"
    fi
  fi
  say "active: $old; starting $release in $new"
  start_slot "$new" "$release"
  # A restarted slot is a new generation: sessions tagged for its old process get a 404.
  ctl standby "$new" >/dev/null
  if ! wait_ready "$new"; then
    stop_slot "$new"; ctl retire "$new" >/dev/null || true
    exit 1
  fi
  # Probe, flip, drain $old until its last session ends, watch $new (rolls back on failure).
  if ! ctl deploy "$new"; then
    say "$release was refused or rolled back; $old still serves; stopping $new"
    stop_slot "$new"; ctl retire "$new" >/dev/null || true
    exit 1
  fi
  say "$old is drained; stopping it (its release stays on disk for a rollback)"
  stop_slot "$old"
  ctl retire "$old" >/dev/null
  [[ -f "$STATE_DIR/release.$new" ]] && cp "$STATE_DIR/release.$new" "$STATE_DIR/previous.$new"
  echo "$release" >"$STATE_DIR/release.$new"
  say "deployed $release in $new"
}

rollback() {
  local cur prev release
  need_slot_commands
  cur=$(active_slot)
  prev=$(other_slot "$cur")
  release=$(cat "$STATE_DIR/release.$prev" 2>/dev/null) || {
    say "no release recorded for $prev (record it with \`$0 record $prev RELEASE\`)"
    exit 1
  }
  say "rolling back: starting $release in $prev again"
  start_slot "$prev" "$release"
  ctl standby "$prev" >/dev/null
  wait_ready "$prev" || { stop_slot "$prev"; ctl retire "$prev" >/dev/null || true; exit 1; }
  ctl deploy "$prev" || exit 1
  stop_slot "$cur"
  ctl retire "$cur" >/dev/null
  say "rolled back to $release in $prev"
}

case "${1:-}" in
  record) [[ $# -eq 3 ]] || { echo "usage: $0 record SLOT RELEASE" >&2; exit 2; }; record "$2" "$3" ;;
  deploy) [[ $# -eq 2 ]] || { echo "usage: $0 deploy RELEASE" >&2; exit 2; }; deploy "$2" ;;
  rollback) rollback ;;
  *) echo "usage: $0 deploy RELEASE | $0 rollback | $0 record SLOT RELEASE" >&2; exit 2 ;;
esac
