"""Kernel e2e: the real ``sealtrail agent --forward`` (probes, a policy enforcing in a cgroup the
test created, the signed journal) ships its journal over mutual TLS to a real ``collector
serve`` on loopback: the collector holds exactly the agent's records, the verdict among them,
``collector verify`` finds nothing, and the export verifies with ``journal verify``."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from agent.collector.store import open_store
from agent.enforce.cgroups import cgroup2_root
from agent.journal.keys import KeyStore
from agent.journal.segments import iter_lines
from tests.agentproc import (
    CONNECT_DENY_POLICY,
    connect_in_cgroup,
    journal_records,
    start_agent,
    stop_agent,
    wait_started,
)
from tests.collector.server_proc import Collector, sealtrail

pytestmark = pytest.mark.kernel

SLOW = 10 if os.environ.get("SEALTRAIL_VM") else 1


def test_the_agent_forwards_its_journal_and_the_collector_holds_exactly_it(
    tmp_path: Path,
) -> None:
    root = tmp_path.resolve()
    host = socket.gethostname()  # the agent journals as this host
    collector = Collector(root / "coll", name="coll-kernel")
    keys = root / "keys"
    KeyStore(keys).init()
    bundle = collector.enroll(host, keys / "journal.pub", root / "bundle")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    (root / "policies").mkdir()
    (root / "policies" / "forwarded.toml").write_text(
        CONNECT_DENY_POLICY.format(name="forwarded", port=port)
    )
    cgroup = cgroup2_root() / f"sealtrail-fwd-{os.getpid()}"
    cgroup.mkdir()
    journal, run_dir, log = root / "journal", root / "run", root / "agent.log"
    collector.start()
    agent = start_agent(
        "--journal", str(journal), "--keys", str(keys), "--policies", str(root / "policies"),
        "--cgroup", str(cgroup), "--run-dir", str(run_dir),
        "--forward", f"https://127.0.0.1:{collector.port}", "--forward-tls", str(bundle),
        log=log,
    )  # fmt: skip
    try:
        wait_started(agent, run_dir, log, 30 * SLOW)
        out = connect_in_cgroup(cgroup, port)
        assert out == "1", out  # EPERM
        deadline = time.monotonic() + 15 * SLOW
        while not [r for r in journal_records(journal) if r["type"] == "verdict"]:
            assert time.monotonic() < deadline, "no verdict journaled"
            time.sleep(0.1)
    finally:
        stop_agent(agent, 30 * SLOW, cgroup, journal)  # a clean stop forwards to the last seal
        listener.close()
        collector.stop()
    lines = [line.data for line in iter_lines(journal)]
    with open_store(str(collector.dir / "store.sqlite")) as store:
        size = store.head(host).size
        held = [line for _, line in store.records(host, 0, size)]
    assert held == lines, (len(held), len(lines))  # the same bytes, each once, in order
    verdicts = [json.loads(line) for line in held if b'"type":"verdict"' in line]
    assert [(v["rule"], v["action"]) for v in verdicts] == [("deny-connect", "deny")]
    assert json.loads(lines[-1])["type"] == "seal"  # up to the final seal
    verify = sealtrail("collector", "verify", "--dir", str(collector.dir), "--json")
    assert verify.returncode == 0, verify.stdout
    out_dir = root / "export"
    sealtrail("collector", "export", "--dir", str(collector.dir), "--host", host,
              "--out", str(out_dir))  # fmt: skip
    sealtrail("journal", "verify", "--journal", str(out_dir), "--key",
              str(out_dir / "journal.pub"), "--strict")  # fmt: skip
