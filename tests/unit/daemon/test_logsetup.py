"""Where the command line logs: stderr as before, or, where $JOURNAL_STREAM names stderr, the
systemd journal with sealtrail's fields. The journal test needs a journald: the host's where
one runs (then root, to read it back), else one of the test's own, started in a private mount
namespace (tmpfs on /run and /var/log: the host's journal is neither read nor written)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agent.logsetup import stderr_is_journal

REPO = Path(__file__).resolve().parents[3]
JOURNALD = Path("/lib/systemd/systemd-journald")
JOURNAL_SOCKET = "/run/systemd/journal/socket"
DIGEST = "sha256:" + "ab" * 32

# What a child logs once set up as the CLI sets it up: a policy load and a denial, through the
# agent's own log calls.
_CHILD = """
import logging, sys
from agent.enforce.verdict import VerdictRecord
from agent.logsetup import setup_logging
from agent.policyload import LoadResult
from agent.recorder import log_verdict
rule, digest = sys.argv[1:3]
setup_logging(logging.INFO)
LoadResult("loaded", digest, ("/etc/sealtrail/policies/shells.toml",), ()).log("start")
log_verdict(VerdictRecord("deny", rule, "no-shells", digest, "lsm", "exec", False, 4242,
                          "/usr/bin/nc", {"path": "/usr/bin/nc"}), 17)
"""


def test_stderr_is_the_journal_only_where_journal_stream_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert stderr_is_journal()
    # inherited by a child whose stderr was redirected: another inode, not the journal
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
    assert not stderr_is_journal()
    for bad in ("", f"{st.st_dev}", f"{st.st_dev}:", f":{st.st_ino}", "x:y"):
        monkeypatch.setenv("JOURNAL_STREAM", bad)
        assert not stderr_is_journal()
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not stderr_is_journal()


def test_outside_systemd_the_log_is_on_stderr_as_before() -> None:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    cmd = [sys.executable, "-c", _CHILD, "no-nc", DIGEST]
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stderr.splitlines() == [
        f"sealtrail: INFO: agent.policyload: policy {DIGEST} loaded (1 files, start)",
        "sealtrail: WARNING: agent.recorder: deny exec by rule no-nc (policy no-shells): "
        "pid 4242 /usr/bin/nc",
    ]


def _journald_running() -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(JOURNAL_SOCKET)
        except OSError:
            return False
    return True


# Run in a shell: the child with stderr a pipe and $JOURNAL_STREAM naming that pipe (as systemd
# names the stream it connects), then journalctl until both lines are in, as JSON on stdout.
_SCRIPT = """
set -e
if [ -n "$PRIVATE" ]; then
    mount -t tmpfs tmpfs /run
    mount -t tmpfs tmpfs /var/log
    "$JOURNALD" & journald=$!
    trap 'kill $journald' EXIT
    for i in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
fi
"$PY" -c '
import os, subprocess, sys
r, w = os.pipe()
st = os.fstat(w)
env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
child = subprocess.Popen(sys.argv[1:], stderr=w, env=env)
os.close(w)
leaked = os.read(r, 65536)
sys.exit(child.wait() or (3 if leaked else 0))
' "$PY" -c "$CHILD" "$RULE" "$DIGEST"
for i in $(seq 100); do
    out=$(journalctl -o json --no-pager SEALTRAIL_POLICY="$DIGEST" SYSLOG_IDENTIFIER=sealtrail)
    [ "$(printf '%s\\n' "$out" | grep -c SEALTRAIL_EVENT)" -ge 2 ] && break
    sleep 0.05
done
printf '%s\\n' "$out"
"""


def test_under_systemd_the_log_is_in_the_journal_with_fields() -> None:
    if _journald_running():
        if os.geteuid() != 0:
            pytest.skip("reading the host's journal back needs root")
        cmd, private = ["sh", "-c", _SCRIPT], ""
    elif os.geteuid() == 0 and JOURNALD.exists() and shutil.which("unshare"):
        cmd, private = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SCRIPT], "1"
    else:
        pytest.skip("no journald here, and no root to start one of this test's own")
    if not shutil.which("journalctl"):
        pytest.skip("no journalctl")
    run = uuid.uuid4().hex  # a host journal holds earlier runs
    rule, digest = f"no-nc-{run[:8]}", f"sha256:{run}{run}"
    env = {**os.environ, "PY": sys.executable, "CHILD": _CHILD, "JOURNALD": str(JOURNALD)}
    env.update(RULE=rule, DIGEST=digest, PRIVATE=private)
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr  # 3: a line went to stderr, not to the journal
    entries = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    by_event = {e["SEALTRAIL_EVENT"]: e for e in entries}
    assert sorted(by_event) == ["policy_loaded", "verdict"]
    loaded, verdict = by_event["policy_loaded"], by_event["verdict"]
    assert loaded["MESSAGE"] == f"policy {digest} loaded (1 files, start)"  # no stderr prefix
    assert (loaded["PRIORITY"], loaded["LOGGER"]) == ("6", "agent.policyload")
    assert verdict["MESSAGE"] == (
        f"deny exec by rule {rule} (policy no-shells): pid 4242 /usr/bin/nc"
    )
    assert {k: v for k, v in verdict.items() if k.startswith("SEALTRAIL_")} == {
        "SEALTRAIL_EVENT": "verdict",
        "SEALTRAIL_ACTION": "deny",
        "SEALTRAIL_RULE": rule,
        "SEALTRAIL_POLICY": digest,
        "SEALTRAIL_SEQ": "17",
    }
    assert (verdict["PRIORITY"], verdict["SYSLOG_IDENTIFIER"]) == ("4", "sealtrail")
