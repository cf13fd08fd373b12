#!/usr/bin/env bash
# make run: the whole product on this machine, without a package or systemd, everything under
# build/run: the agent with the example policies (in monitor mode: verdicts are recorded,
# nothing is stopped), a collector on loopback receiving its journal over mutual TLS, and the
# commands to look at both. Ctrl-C stops both; the agent seals its journal and its pins are
# removed. A second run goes on with the same keys, journal and collector.
# Environment: SEALTRAIL_RUN_PORT (the collector's loopback port, default 8443).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=$REPO/build/run
ST=$REPO/.venv/bin/sealtrail
PORT=${SEALTRAIL_RUN_PORT:-8443}
# Not the machine's /sys/fs/bpf/sealtrail: that is an installed agent's.
PINS=/sys/fs/bpf/sealtrail-run
HOST=$(hostname)

[ "$(id -u)" = 0 ] || { echo "run: needs root (eBPF, fanotify)" >&2; exit 1; }
mkdir -p "$RUN/policies"
chmod 0700 "$RUN"

# The example policies, switched to monitor: on a developer's machine an enforcing tmp-exec
# would kill whatever its tools run from /tmp. Switch a file to enforce and `policy reload`.
for p in "$REPO"/policies/*.toml; do
    sed 's/^mode = "enforce"/mode = "monitor"/' "$p" >"$RUN/policies/$(basename "$p")"
done

# The host's keys, the collector, the host's enrollment: once.
SETUP=$RUN/setup.log
[ -e "$RUN/keys/journal.pub" ] || "$ST" keys init --keys "$RUN/keys" >>"$SETUP" 2>&1
if [ ! -e "$RUN/collector/collector.toml" ]; then
    "$ST" collector init --dir "$RUN/collector" --listen "127.0.0.1:$PORT" >>"$SETUP" 2>&1
fi
if [ ! -e "$RUN/forward/client.crt" ]; then
    "$ST" collector enroll --dir "$RUN/collector" --host "$HOST" \
        --journal-key "$RUN/keys/journal.pub" --out "$RUN/forward" >>"$SETUP" 2>&1
fi
cat >"$RUN/agent.toml" <<EOF
# written by make run (packaging/run-local.sh); docs/configuration.md
policies = "$RUN/policies"
journal = "$RUN/journal"
keys = "$RUN/keys"
run_dir = "$RUN/run"

[forward]
url = "https://127.0.0.1:$PORT"
tls = "$RUN/forward"
EOF

AGENT_PID=
COLLECTOR_PID=
stop() {
    trap - EXIT INT TERM
    set +e
    [ -n "$AGENT_PID" ] && kill -TERM "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID"
    [ -n "$COLLECTOR_PID" ] && kill -TERM "$COLLECTOR_PID" 2>/dev/null && wait "$COLLECTOR_PID"
    [ -d "$PINS" ] && "$ST" agent --unpin --pin-dir "$PINS"
    echo "run: stopped; state kept in $RUN (rm -rf it to start afresh)"
}
trap stop EXIT INT TERM

"$ST" collector serve --dir "$RUN/collector" --listen "127.0.0.1:$PORT" \
    >"$RUN/collector.log" 2>&1 &
COLLECTOR_PID=$!
for _ in $(seq 100); do # "collector NAME serving on ADDR:PORT"
    grep -qs "serving on" "$RUN/collector.log" && break
    kill -0 "$COLLECTOR_PID" 2>/dev/null || { cat "$RUN/collector.log" >&2; exit 1; }
    sleep 0.1
done
"$ST" agent --config "$RUN/agent.toml" --pin-dir "$PINS" >"$RUN/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 300); do # the agent writes its status.json once it enforces
    grep -qs "\"pid\": $AGENT_PID\b" "$RUN/run/status.json" && break
    kill -0 "$AGENT_PID" 2>/dev/null || { cat "$RUN/agent.log" >&2; exit 1; }
    sleep 0.1
done

S="sealtrail" # shown as a user would type it after `. .venv/bin/activate`
cat <<EOF

sealtrail runs: agent (pid $AGENT_PID, log build/run/agent.log), collector on 127.0.0.1:$PORT
(pid $COLLECTOR_PID, log build/run/collector.log); everything is in build/run/.
In another shell, from $REPO, after . .venv/bin/activate:

  $S status --run-dir build/run/run --journal build/run/journal
  $S journal tail -f --journal build/run/journal
  $S journal verify --journal build/run/journal --key build/run/keys/journal.pub
  $S collector hosts --dir build/run/collector
  $S collector verify --dir build/run/collector

Try a policy: cp /usr/bin/true /tmp/x && /tmp/x   (tmp-exec records a would_deny verdict;
set mode = "enforce" in build/run/policies/tmp-exec.toml, then
$S policy reload --run-dir build/run/run, and /tmp/x is refused).
Ctrl-C stops both.
EOF
wait "$AGENT_PID"
