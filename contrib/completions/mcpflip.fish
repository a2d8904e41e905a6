# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_mcpflip_global_optspecs
    string join \n h/help V/version
end

function __fish_mcpflip_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_mcpflip_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_mcpflip_using_subcommand
    set -l cmd (__fish_mcpflip_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c mcpflip -n "__fish_mcpflip_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mcpflip -n "__fish_mcpflip_needs_command" -s V -l version -d 'Print version'
complete -c mcpflip -n "__fish_mcpflip_needs_command" -f -a "run" -d 'Run the proxy (exit 0 after a clean shutdown, 2 on a bad config, 1 on another failure)'
complete -c mcpflip -n "__fish_mcpflip_needs_command" -f -a "check" -d 'Validate a config and print the resolved settings, like `nginx -t` (exit 2 on error)'
complete -c mcpflip -n "__fish_mcpflip_needs_command" -f -a "demo" -d 'A self-contained showcase: two demo slots, clients holding SSE sessions, a deploy with drain'
complete -c mcpflip -n "__fish_mcpflip_needs_command" -f -a "upstream" -d 'The built-in demo MCP server (tools get_document, list_documents, search_documents, slow, whoami)'
complete -c mcpflip -n "__fish_mcpflip_needs_command" -f -a "cert" -d 'Write a development certificate: a local CA and a server certificate it signed for localhost, 127.0.0.1 and ::1 (plus --name ...)'
complete -c mcpflip -n "__fish_mcpflip_needs_command" -f -a "ctl" -d 'Send one control command to a running proxy'
complete -c mcpflip -n "__fish_mcpflip_needs_command" -f -a "completions" -d 'Print the shell completion script for SHELL, e.g. `mcpflip completions bash > /etc/bash_completion.d/mcpflip`'
complete -c mcpflip -n "__fish_mcpflip_needs_command" -f -a "man" -d 'Print the man page mcpflip(1), or write every page (mcpflip-run(1), mcpflip-ctl-deploy(1), ...) to --dir'
complete -c mcpflip -n "__fish_mcpflip_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand run" -l config -d 'The config file' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand run" -l ignore-state -d 'Start from the config\'s weights, ignoring the state file'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand check" -l config -d 'The config file' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand check" -s h -l help -d 'Print help'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand demo" -s h -l help -d 'Print help'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand upstream" -l port -d 'The loopback port to listen on (127.0.0.1)' -r
complete -c mcpflip -n "__fish_mcpflip_using_subcommand upstream" -l slot -d 'The slot name `whoami` answers with' -r
complete -c mcpflip -n "__fish_mcpflip_using_subcommand upstream" -l transport -d 'The MCP transports to serve: legacy HTTP+SSE on /sse, Streamable HTTP on /mcp, or both' -r -f -a "sse\t'Legacy HTTP+SSE (2024-11-05): GET /sse, POST /messages'
streamable-http\t'Streamable HTTP: POST, GET and DELETE /mcp'
both\t'Both'"
complete -c mcpflip -n "__fish_mcpflip_using_subcommand upstream" -l tools -d 'Serve only these tools (comma-separated); simulates a broken release' -r
complete -c mcpflip -n "__fish_mcpflip_using_subcommand upstream" -l fail-initialize -d 'Answer 500 to initialize'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand upstream" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand cert" -l dir -d 'Where to write dev-ca.crt, server.crt and server.key' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand cert" -l name -d 'More DNS names or IP addresses for the server certificate (repeatable)' -r
complete -c mcpflip -n "__fish_mcpflip_using_subcommand cert" -l dev -d 'Required: this command only makes development certificates'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand cert" -l force -d 'Replace an existing development certificate'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand cert" -s h -l help -d 'Print help'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -l socket -d 'The control socket' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -l config -d 'The config that names the socket (when --socket is not given)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -l cluster -d 'Control the fleet of this config\'s [cluster] straight through etcd (no socket; from any machine that reaches etcd)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -l json -d 'Print the raw JSON lines'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -f -a "status" -d 'The slots with their live counts, the active slot, a running drain and watch'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -f -a "flip" -d 'Probe SLOT, then send new sessions to it: weight 100 for SLOT, 0 for every other serving slot'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -f -a "weights" -d 'Set weights in one atomic table swap (canary shifts), e.g. `weights blue=90 green=10`'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -f -a "drain" -d 'Stop new sessions to SLOT; its sessions keep going to it until it is drained'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -f -a "wait" -d 'Wait until SLOT is drained: `wait SLOT drained [--timeout DUR]`'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -f -a "probe" -d 'Run the MCP probe against SLOT and report each step'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -f -a "rollback" -d 'Flip back to the slot active before the last flip, if it passes its probe'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -f -a "retire" -d 'Mark SLOT\'s process as gone: requests of its sessions are answered 404'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -f -a "standby" -d 'Mark SLOT\'s process as started again: a new generation, a fresh connection pool'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -f -a "deploy" -d 'Probe SLOT, flip, drain the old slot until its last session ends, then watch SLOT'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -f -a "reload" -d 'Re-read the config file: slots, certificates, [drain], [probe], [watch], [health]'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -f -a "upgrade" -d 'Start the mcpflip binary again and hand it the listeners without dropping a connection'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and not __fish_seen_subcommand_from status flip weights drain wait probe rollback retire standby deploy reload upgrade help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from status" -l socket -d 'The control socket' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from status" -l config -d 'The config that names the socket (when --socket is not given)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from status" -l cluster -d 'Control the fleet of this config\'s [cluster] straight through etcd (no socket; from any machine that reaches etcd)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from status" -l json -d 'Print the raw JSON lines'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from flip" -l deadline -d 'Drain deadline for the old slots (default: [drain] deadline), e.g. 90s' -r
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from flip" -l socket -d 'The control socket' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from flip" -l config -d 'The config that names the socket (when --socket is not given)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from flip" -l cluster -d 'Control the fleet of this config\'s [cluster] straight through etcd (no socket; from any machine that reaches etcd)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from flip" -l no-probe -d 'Skip the probe (and the watch window that follows a probed flip)'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from flip" -l drain -d 'Drain the slots that served until now: their sessions keep going to them'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from flip" -l wait -d 'With --drain: reply once the old slots are drained'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from flip" -l json -d 'Print the raw JSON lines'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from flip" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from weights" -l deadline -d 'With --drain: the drain deadline (default: [drain] deadline), e.g. 90s' -r
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from weights" -l socket -d 'The control socket' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from weights" -l config -d 'The config that names the socket (when --socket is not given)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from weights" -l cluster -d 'Control the fleet of this config\'s [cluster] straight through etcd (no socket; from any machine that reaches etcd)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from weights" -l drain -d 'A serving slot set to 0 drains (its sessions keep going to it) instead of going to standby (its sessions get 404, or move with [drain] migrate = "replay")'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from weights" -l wait -d 'With --drain: reply once the slots set to 0 are drained'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from weights" -l json -d 'Print the raw JSON lines'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from weights" -s h -l help -d 'Print help'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from drain" -l deadline -d 'After this, the slot\'s remaining streams end at an event boundary (default: [drain] deadline)' -r
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from drain" -l socket -d 'The control socket' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from drain" -l config -d 'The config that names the socket (when --socket is not given)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from drain" -l cluster -d 'Control the fleet of this config\'s [cluster] straight through etcd (no socket; from any machine that reaches etcd)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from drain" -l wait -d 'Reply once the slot is drained (no live stream, nothing in flight) or the deadline passed'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from drain" -l migrate -d 'End the slot\'s streams at event boundaries now and move its sessions to a serving slot (needs [drain] migrate = "replay"; else they get 404)'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from drain" -l json -d 'Print the raw JSON lines'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from drain" -s h -l help -d 'Print help'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from wait" -l timeout -d 'Give up (code `timeout`) after this long; the drain goes on' -r
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from wait" -l socket -d 'The control socket' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from wait" -l config -d 'The config that names the socket (when --socket is not given)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from wait" -l cluster -d 'Control the fleet of this config\'s [cluster] straight through etcd (no socket; from any machine that reaches etcd)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from wait" -l json -d 'Print the raw JSON lines'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from wait" -s h -l help -d 'Print help'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from probe" -l socket -d 'The control socket' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from probe" -l config -d 'The config that names the socket (when --socket is not given)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from probe" -l cluster -d 'Control the fleet of this config\'s [cluster] straight through etcd (no socket; from any machine that reaches etcd)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from probe" -l json -d 'Print the raw JSON lines'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from probe" -s h -l help -d 'Print help'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from rollback" -l socket -d 'The control socket' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from rollback" -l config -d 'The config that names the socket (when --socket is not given)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from rollback" -l cluster -d 'Control the fleet of this config\'s [cluster] straight through etcd (no socket; from any machine that reaches etcd)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from rollback" -l json -d 'Print the raw JSON lines'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from rollback" -s h -l help -d 'Print help'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from retire" -l socket -d 'The control socket' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from retire" -l config -d 'The config that names the socket (when --socket is not given)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from retire" -l cluster -d 'Control the fleet of this config\'s [cluster] straight through etcd (no socket; from any machine that reaches etcd)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from retire" -l json -d 'Print the raw JSON lines'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from retire" -s h -l help -d 'Print help'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from standby" -l socket -d 'The control socket' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from standby" -l config -d 'The config that names the socket (when --socket is not given)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from standby" -l cluster -d 'Control the fleet of this config\'s [cluster] straight through etcd (no socket; from any machine that reaches etcd)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from standby" -l json -d 'Print the raw JSON lines'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from standby" -s h -l help -d 'Print help'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from deploy" -l deadline -d 'Drain deadline for the old slot (default: [drain] deadline)' -r
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from deploy" -l watch -d 'Watch window (default: [watch] window); 0s skips the watch' -r
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from deploy" -l socket -d 'The control socket' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from deploy" -l config -d 'The config that names the socket (when --socket is not given)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from deploy" -l cluster -d 'Control the fleet of this config\'s [cluster] straight through etcd (no socket; from any machine that reaches etcd)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from deploy" -l migrate -d 'Drain the old slot with `drain --migrate`: its sessions move to SLOT at once'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from deploy" -l json -d 'Print the raw JSON lines'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from deploy" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from reload" -l socket -d 'The control socket' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from reload" -l config -d 'The config that names the socket (when --socket is not given)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from reload" -l cluster -d 'Control the fleet of this config\'s [cluster] straight through etcd (no socket; from any machine that reaches etcd)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from reload" -l json -d 'Print the raw JSON lines'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from reload" -s h -l help -d 'Print help'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from upgrade" -l binary -d 'The binary to start (default: the path this process was started from, read anew)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from upgrade" -l timeout -d 'How long the new process has to take over (default: 30s)' -r
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from upgrade" -l socket -d 'The control socket' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from upgrade" -l config -d 'The config that names the socket (when --socket is not given)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from upgrade" -l cluster -d 'Control the fleet of this config\'s [cluster] straight through etcd (no socket; from any machine that reaches etcd)' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from upgrade" -l json -d 'Print the raw JSON lines'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from upgrade" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "status" -d 'The slots with their live counts, the active slot, a running drain and watch'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "flip" -d 'Probe SLOT, then send new sessions to it: weight 100 for SLOT, 0 for every other serving slot'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "weights" -d 'Set weights in one atomic table swap (canary shifts), e.g. `weights blue=90 green=10`'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "drain" -d 'Stop new sessions to SLOT; its sessions keep going to it until it is drained'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "wait" -d 'Wait until SLOT is drained: `wait SLOT drained [--timeout DUR]`'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "probe" -d 'Run the MCP probe against SLOT and report each step'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "rollback" -d 'Flip back to the slot active before the last flip, if it passes its probe'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "retire" -d 'Mark SLOT\'s process as gone: requests of its sessions are answered 404'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "standby" -d 'Mark SLOT\'s process as started again: a new generation, a fresh connection pool'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "deploy" -d 'Probe SLOT, flip, drain the old slot until its last session ends, then watch SLOT'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "reload" -d 'Re-read the config file: slots, certificates, [drain], [probe], [watch], [health]'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "upgrade" -d 'Start the mcpflip binary again and hand it the listeners without dropping a connection'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand completions" -s h -l help -d 'Print help'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand man" -l dir -d 'Write mcpflip.1 and one page per subcommand into this directory instead' -r -F
complete -c mcpflip -n "__fish_mcpflip_using_subcommand man" -s h -l help -d 'Print help'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and not __fish_seen_subcommand_from run check demo upstream cert ctl completions man help" -f -a "run" -d 'Run the proxy (exit 0 after a clean shutdown, 2 on a bad config, 1 on another failure)'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and not __fish_seen_subcommand_from run check demo upstream cert ctl completions man help" -f -a "check" -d 'Validate a config and print the resolved settings, like `nginx -t` (exit 2 on error)'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and not __fish_seen_subcommand_from run check demo upstream cert ctl completions man help" -f -a "demo" -d 'A self-contained showcase: two demo slots, clients holding SSE sessions, a deploy with drain'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and not __fish_seen_subcommand_from run check demo upstream cert ctl completions man help" -f -a "upstream" -d 'The built-in demo MCP server (tools get_document, list_documents, search_documents, slow, whoami)'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and not __fish_seen_subcommand_from run check demo upstream cert ctl completions man help" -f -a "cert" -d 'Write a development certificate: a local CA and a server certificate it signed for localhost, 127.0.0.1 and ::1 (plus --name ...)'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and not __fish_seen_subcommand_from run check demo upstream cert ctl completions man help" -f -a "ctl" -d 'Send one control command to a running proxy'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and not __fish_seen_subcommand_from run check demo upstream cert ctl completions man help" -f -a "completions" -d 'Print the shell completion script for SHELL, e.g. `mcpflip completions bash > /etc/bash_completion.d/mcpflip`'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and not __fish_seen_subcommand_from run check demo upstream cert ctl completions man help" -f -a "man" -d 'Print the man page mcpflip(1), or write every page (mcpflip-run(1), mcpflip-ctl-deploy(1), ...) to --dir'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and not __fish_seen_subcommand_from run check demo upstream cert ctl completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "status" -d 'The slots with their live counts, the active slot, a running drain and watch'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "flip" -d 'Probe SLOT, then send new sessions to it: weight 100 for SLOT, 0 for every other serving slot'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "weights" -d 'Set weights in one atomic table swap (canary shifts), e.g. `weights blue=90 green=10`'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "drain" -d 'Stop new sessions to SLOT; its sessions keep going to it until it is drained'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "wait" -d 'Wait until SLOT is drained: `wait SLOT drained [--timeout DUR]`'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "probe" -d 'Run the MCP probe against SLOT and report each step'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "rollback" -d 'Flip back to the slot active before the last flip, if it passes its probe'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "retire" -d 'Mark SLOT\'s process as gone: requests of its sessions are answered 404'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "standby" -d 'Mark SLOT\'s process as started again: a new generation, a fresh connection pool'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "deploy" -d 'Probe SLOT, flip, drain the old slot until its last session ends, then watch SLOT'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "reload" -d 'Re-read the config file: slots, certificates, [drain], [probe], [watch], [health]'
complete -c mcpflip -n "__fish_mcpflip_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "upgrade" -d 'Start the mcpflip binary again and hand it the listeners without dropping a connection'
