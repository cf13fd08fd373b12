"""A full disk under the journal: enforcement goes on, STATUS and the log say so, the loss is
journaled once there is room again, and nothing written before is damaged.

A container of its own (the module's), its journal directory a small tmpfs mounted before the
install, so the package's agent starts its journal there.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.packaging.container import Container
from tests.packaging.steps import (
    AGENT,
    FORBIDDEN_BIN,
    JOURNAL,
    POLICY,
    TEST_POLICY,
    attempt,
    install,
    journal_verifies,
)

pytestmark = pytest.mark.slow
FILLER = f"{JOURNAL}/filler"


def status_until(ct: Container, wanted: bool, needle: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while (needle in (status := ct.unit(AGENT, "StatusText"))) != wanted:
        assert time.monotonic() < deadline, f"{status}\n{ct.journal(AGENT)[-3000:]}"
        time.sleep(0.5)
    return status


def test_a_full_journal_disk_stops_recording_not_enforcing(container: Container, deb: Path) -> None:
    container.run("mkdir", "-p", JOURNAL)
    container.run("mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", JOURNAL)
    install(container, deb)
    container.sh(f"mkdir -p {Path(FORBIDDEN_BIN).parent} && cp /usr/bin/touch {FORBIDDEN_BIN}")
    container.run("tee", TEST_POLICY, input=POLICY)
    container.run("systemctl", "reload", AGENT)
    assert attempt(container, "exec", FORBIDDEN_BIN) == "EPERM"
    before = journal_verifies(container)

    # Fill it: the agent records the host's events too, so its next writes fail.
    container.run("sh", "-c", f"dd if=/dev/zero of={FILLER} bs=64k 2>/dev/null || true")
    for _ in range(20):
        container.spawn(["true"])
    status = status_until(container, True, "JOURNAL NOT WRITABLE")
    print(f"\npackaging: full disk: STATUS={status}")
    assert container.unit(AGENT, "ActiveState") == "active"
    assert "recording stops, enforcement goes on" in container.journal(AGENT)
    for _ in range(3):
        assert attempt(container, "exec", FORBIDDEN_BIN) == "EPERM"
    assert container.run("test", "-e", "/root/exec-ran", check=False).returncode != 0

    # Room again: the journal reopens (every 5 s), its first record says what was lost.
    container.run("rm", FILLER)
    status_until(container, False, "JOURNAL NOT WRITABLE")
    loss = container.run("sealtrail", "journal", "tail", "--journal", JOURNAL, "--json",
                         "--type", "loss", "-n", "5").stdout  # fmt: skip
    assert "journal_unwritable" in loss, loss
    after = journal_verifies(container)
    print(f"packaging: after the full disk: {after.strip().splitlines()[-1]}")
    assert before.split(" records")[0] != after.split(" records")[0]  # it grew, and verifies
    container.run("systemctl", "stop", AGENT)
    journal_verifies(container, strict=True)
