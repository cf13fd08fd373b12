"""Kernel e2e, who did it: a task whose login uid was set (as pam_loginuid does at a login)
changes its uid like ``su`` does; the real agent's journal records the login uid (auid) and
audit session id the kernel holds, read by the probes from the task, in every event of it and
its children and in the verdict on its connect, and ``journal query --auid`` finds exactly
what that login did, by uid and by user name."""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.enforce.cgroups import cgroup2_root
from agent.events.model import AUID_UNSET
from tests.agentproc import (
    CONNECT_DENY_POLICY,
    journal_records,
    start_agent,
    stop_agent,
    wait_started,
)

pytestmark = pytest.mark.kernel

SLOW = 10 if os.environ.get("SEALTRAIL_VM") else 1
NOBODY = pwd.getpwnam("nobody")
LOGIN = NOBODY.pw_uid  # the "person" who logs in: a uid with a name, so --auid NAME works

#: In the test's cgroup: log in (set the login uid), print the session the kernel gave it, su
#: to nobody, then run a program and connect to the denied port as nobody.
SESSION = textwrap.dedent(
    """
    import os, socket, subprocess, sys
    with open("/proc/self/loginuid", "w") as f:
        f.write(sys.argv[1])
    print(open("/proc/self/sessionid").read(), flush=True)
    os.setgid(65534)
    os.setuid(65534)
    subprocess.run(["/bin/true", "who-did-it"], check=True)
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", int(sys.argv[2])))
        print("ok")
    except OSError as e:
        print(e.errno)
    """
)


def test_events_and_verdicts_carry_the_login_uid_and_session_through_su(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = Path("/proc/self/loginuid").read_text().strip()
    assert own == str(AUID_UNSET), "the test runner must not have a login uid (it is inherited)"
    root = tmp_path.resolve()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    (root / "policies").mkdir()
    (root / "policies" / "who.toml").write_text(CONNECT_DENY_POLICY.format(name="who", port=port))
    cgroup = cgroup2_root() / f"sealtrail-auid-{os.getpid()}"
    cgroup.mkdir()
    journal, run_dir, log = root / "journal", root / "run", root / "agent.log"
    agent = start_agent(
        "--journal", str(journal), "--keys", str(root / "keys"),
        "--policies", str(root / "policies"), "--cgroup", str(cgroup),
        "--run-dir", str(run_dir), log=log,
    )  # fmt: skip
    try:
        wait_started(agent, run_dir, log, 30 * SLOW)
        script = f'echo $$ > {cgroup}/cgroup.procs && exec "$@"'
        out = subprocess.run(
            ["/bin/sh", "-c", script, "sh", sys.executable, "-c", SESSION, str(LOGIN), str(port)],
            capture_output=True, text=True, timeout=30 * SLOW, check=True,
        )  # fmt: skip
        ses_text, result = out.stdout.split()
        assert result == "1", out  # EPERM: the connect was denied in the kernel
        ses = int(ses_text)
        assert ses != AUID_UNSET
        deadline = time.monotonic() + 15 * SLOW
        while not [r for r in journal_records(journal) if r["type"] == "verdict"]:
            assert time.monotonic() < deadline, "no verdict journaled"
            time.sleep(0.1)
    finally:
        stop_agent(agent, 30 * SLOW, cgroup, journal)
        listener.close()
    records = journal_records(journal)
    by_login = [r for r in records if r.get("auid") == LOGIN]
    (true_exec,) = [r for r in by_login if r.get("kind") == "exec" and "who-did-it" in r["argv"]]
    assert true_exec["uid"] == NOBODY.pw_uid  # after su: the uid changed, the login did not
    assert true_exec["ses"] == ses
    connects = [r for r in by_login if r.get("kind") == "connect"]
    assert connects and all(r["ses"] == ses and r["uid"] == NOBODY.pw_uid for r in connects)
    (verdict,) = [r for r in records if r["type"] == "verdict"]
    assert (verdict["rule"], verdict["action"]) == ("deny-connect", "deny")
    assert (verdict["auid"], verdict["ses"]) == (LOGIN, ses)
    assert all(r["ses"] == ses for r in by_login)
    # the rest of the host (the runner, the agent's own children) never logged in here
    others = [r for r in records if r["type"] == "event" and r.get("auid") != LOGIN]
    assert others and all(r["auid"] == AUID_UNSET for r in others)

    from agent.cli import main

    for who in (str(LOGIN), NOBODY.pw_name):
        assert main(["journal", "query", "--journal", str(journal), "--auid", who, "-o",
                     "json"]) == 0  # fmt: skip
        found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert found == by_login
    assert main(["journal", "query", "--journal", str(journal), "--session", str(ses),
                 "--type", "verdict", "-o", "ocsf"]) == 0  # fmt: skip
    (finding,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert finding["class_uid"] == 2004
    assert finding["actor"]["user"]["uid"] == str(LOGIN)
    assert finding["actor"]["session"]["uid"] == str(ses)
