"""Forwarding end to end: a real ``collector serve`` process (``collector init/enroll/serve``) on
a loopback port, a host process running the real service loop and forwarder over real mutual
TLS (``hostproc``), and faults: the host killed -9 mid-batch and restarted, the collector down
then back, TCP connections cut mid-batch. Each ends with the collector holding exactly the
journal's records: the same bytes, the same count, each once, in order."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.collector.store import open_store
from agent.forward.records import receipt_of
from agent.journal.keys import KeyStore, PublicKey
from agent.journal.reader import iter_records
from agent.journal.segments import iter_lines
from agent.status import read_status
from tests.agentproc import _die_with_parent
from tests.collector.server_proc import ROOT, Collector, sealtrail

pytestmark = pytest.mark.slow
HOST = "web-01"


class Host:
    """One host: its journal and keys, its enrollment bundle, and its agent process."""

    def __init__(self, root: Path, collector: Collector) -> None:
        self.root = root
        self.journal = root / "journal"
        self.keys = root / "keys"
        self.run_dir = root / "run"
        self.log = root / "host.log"
        KeyStore(self.keys).init()
        self.bundle = collector.enroll(HOST, self.keys / "journal.pub", root / "bundle")
        self.collector_key = PublicKey.load(self.bundle / "collector.pub")
        self.proc: subprocess.Popen[str] | None = None

    def start(self, port: int, *options: str) -> None:
        assert self.proc is None
        argv = [sys.executable, "-m", "tests.forward.hostproc", "--host", HOST]
        argv += ["--journal", str(self.journal), "--keys", str(self.keys)]
        argv += ["--run-dir", str(self.run_dir), "--forward", f"https://127.0.0.1:{port}"]
        argv += ["--forward-tls", str(self.bundle), *options]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, text=True, cwd=ROOT,
                                         preexec_fn=_die_with_parent)  # fmt: skip

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        proc, self.proc = self.proc, None
        assert proc is not None
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"the host did not stop in {timeout} s: {self.log.read_text()}"
            ) from None

    def wait(self, timeout: float) -> int:
        """The exit status of a host that ends by itself (or is killed by the test)."""
        proc, self.proc = self.proc, None
        assert proc is not None
        return proc.wait(timeout)

    def lines(self) -> list[bytes]:
        return [line.data for line in iter_lines(self.journal)]

    def forward_status(self) -> dict[str, Any]:
        return read_status(self.run_dir, "forward.json") or {}

    def records(self, rtype: str) -> list[Any]:
        return [r for _, r in iter_records(self.journal) if r is not None and r.type == rtype]


def stored(collector: Collector) -> list[bytes]:
    with open_store(str(collector.dir / "store.sqlite")) as store:
        size = store.head(HOST).size
        return [line for _, line in store.records(HOST, 0, size)]


def wait_for(what: str, check: Callable[[], bool], timeout: float, host: Host) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not {what} in {timeout} s: {host.forward_status()}\n"
                         f"{host.log.read_text()[-3000:]}")  # fmt: skip


def assert_exactly_the_journal(collector: Collector, host: Host) -> None:
    lines = host.lines()
    held = stored(collector)
    assert len(held) == len(lines), (len(held), len(lines))
    assert held == lines  # the same bytes, each once, in order
    assert b"".join(held) == b"".join(lines)


def caught_up(host: Host, at_least: int = 0) -> Callable[[], bool]:
    def check() -> bool:
        s = host.forward_status()
        return s.get("acknowledged", -1) >= max(at_least, 1) and s.get("lag_records") == 0

    return check


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(tmp_path / "coll", name="coll-1")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def host(tmp_path: Path, collector: Collector) -> Iterator[Host]:
    h = Host(tmp_path / "host", collector)
    try:
        yield h
    finally:
        if h.proc is not None:
            h.stop(signal.SIGKILL)


def test_the_collector_holds_exactly_the_journal(collector: Collector, host: Host) -> None:
    collector.start()
    host.start(collector.port, "--rate", "10000", "--events", "20000")
    wait_for("all recorded and forwarded", caught_up(host, 20000), 60, host)
    assert host.stop() == 0
    assert_exactly_the_journal(collector, host)
    assert host.records("stop") and host.lines()[-1].endswith(b'"type":"seal"}')
    receipts = host.records("receipt")
    assert receipts  # the collector's signed word, in the host's own chain
    for record in receipts:
        receipt = receipt_of(record)
        receipt.verify(host.collector_key, host=HOST)
        assert receipt.size <= record.seq  # it acknowledged records before it
    assert not host.records("forward_error")
    key = str(host.keys / "journal.pub")  # the host's own journal, receipts and all:
    sealtrail("journal", "verify", "--journal", str(host.journal), "--key", key, "--strict")
    status = host.forward_status()
    assert status["state"] == "stopped" and status["lag_records"] == 0
    verify = sealtrail("collector", "verify", "--dir", str(collector.dir), "--json")
    assert json.loads(verify.stdout)  # exit 0: the store holds up
    out = host.root / "export"
    sealtrail("collector", "export", "--dir", str(collector.dir), "--host", HOST, "--out", str(out))
    assert b"".join(line.data for line in iter_lines(out)) == b"".join(host.lines())
    sealtrail("journal", "verify", "--journal", str(out), "--key", str(out / "journal.pub"),
              "--strict")  # fmt: skip


class CuttingProxy:
    """TCP from the host to the collector; connection n is cut (RST) once the host has sent it
    ``cuts[n]`` bytes, in the middle of a request's body; ``on_cut`` runs first."""

    def __init__(
        self, port: int, cuts: list[int], on_cut: Callable[[], None] | None = None
    ) -> None:
        self.upstream = port
        self.cuts = list(cuts)
        self.on_cut = on_cut
        self.cut = 0
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self.connections += 1
            limit = self.cuts.pop(0) if self.cuts else None
            threading.Thread(target=self._pipe, args=(client, server, limit), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if limit is not None and sent + len(data) >= limit:
                    if self.on_cut is not None:
                        self.on_cut()
                    dst.sendall(data[: limit - sent])
                    self.cut += 1
                    for s in (src, dst):  # a reset, not a clean close
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        s.shutdown(socket.SHUT_RD)  # wakes the other direction's recv
                        s.close()
                    return
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def test_kill_9_mid_batch_then_restart_stores_each_record_once(
    collector: Collector, host: Host
) -> None:
    collector.start()

    running: list[subprocess.Popen[str]] = []
    # the host dies with a request's body half sent
    proxy = CuttingProxy(collector.port, [3_000_000], on_cut=lambda: running[0].kill())
    try:
        host.start(proxy.port, "--rate", "40000")
        assert host.proc is not None
        running.append(host.proc)
        assert host.wait(60) == -signal.SIGKILL
        assert proxy.cut == 1
        before = len(host.lines())
        assert 0 < len(stored(collector)) < before  # the half-sent batch is not stored
        host.start(proxy.port, "--rate", "5000", "--events", "5000")
        wait_for("caught up again", caught_up(host, before + 5000), 60, host)
        assert host.stop() == 0
    finally:
        proxy.close()
    assert host.records("recovery")  # the restart recovered the killed run's end
    assert_exactly_the_journal(collector, host)


def test_collector_down_then_back_backs_off_then_catches_up(
    collector: Collector, host: Host
) -> None:
    collector.start()
    host.start(collector.port, "--rate", "5000", "--backoff-cap", "1")
    wait_for("forwarding", caught_up(host, 5000), 60, host)
    collector.stop(signal.SIGKILL)
    wait_for("backing off", lambda: host.forward_status().get("state") == "backoff", 30, host)
    time.sleep(60)  # 5,000 events/s recorded meanwhile: the journal is the spool
    down = host.forward_status()
    assert down["last_error"]["error"] == "unreachable" and down["lag_records"] > 200_000
    assert down["lag_seconds"] > 55
    collector.start()
    started = time.monotonic()
    wait_for("caught up", caught_up(host, down["durable"]), 60, host)
    catch_up = time.monotonic() - started
    assert host.stop() == 0
    assert_exactly_the_journal(collector, host)
    errors = host.records("forward_error")
    assert [r.fields["error"] for r in errors] == ["unreachable"]  # journaled once
    assert catch_up < 30


def test_tcp_connections_cut_mid_batch(collector: Collector, host: Host) -> None:
    collector.start()
    proxy = CuttingProxy(collector.port, [300_000, 150_000, 700_000])
    try:
        host.start(proxy.port, "--rate", "30000", "--events", "60000", "--backoff-cap", "1")
        wait_for("all forwarded", caught_up(host, 60000), 90, host)
        assert proxy.cut == 3 and proxy.connections >= 4  # reconnected after each cut
        assert host.stop() == 0
    finally:
        proxy.close()
    assert_exactly_the_journal(collector, host)
    assert {r.fields["error"] for r in host.records("forward_error")} == {"unreachable"}


def host_state(collector: Collector) -> str:
    doc = json.loads(sealtrail("collector", "hosts", "--dir", str(collector.dir), "--json").stdout)
    (row,) = doc["hosts"]
    return str(row["state"])


def test_an_idle_host_stays_ok_by_its_heartbeat_and_turns_silent_when_stopped(
    collector: Collector, host: Host
) -> None:
    toml = collector.dir / "collector.toml"
    toml.write_text(toml.read_text().replace("seconds = 10\n", "seconds = 1\n"))
    collector.start()
    host.start(collector.port, "--rate", "100", "--events", "50", "--heartbeat", "1")
    wait_for("forwarded", caught_up(host, 50), 30, host)
    time.sleep(4.5)  # idle for more than 3 heartbeats: the heartbeat seals keep it ok
    assert host_state(collector) == "ok"
    assert host.stop() == 0
    wait_for("silent", lambda: host_state(collector) == "silent", 30, host)
    host.start(collector.port, "--rate", "100", "--events", "10", "--heartbeat", "1")
    wait_for("ok again", lambda: host_state(collector) == "ok", 30, host)
    assert host.stop() == 0
    assert_exactly_the_journal(collector, host)


def test_a_wiped_journal_is_reported_as_a_rollback_not_silence(
    collector: Collector, host: Host
) -> None:
    """The host's journal is deleted (the keys kept) and the agent starts again from record 0:
    the collector must not wait for records it already has, it must say what happened."""
    collector.start()
    host.start(collector.port, "--rate", "2000", "--events", "3000")
    wait_for("forwarded", caught_up(host, 3000), 60, host)
    assert host.stop() == 0
    held = stored(collector)
    from agent.journal import protect

    protect.clear_all(host.journal)
    for seg in host.journal.iterdir():
        seg.unlink()
    host.start(collector.port, "--rate", "2000", "--events", "200")
    try:
        wait_for("rejected", lambda: any(
            e.fields.get("detail", "").find("rollback") >= 0 for e in host.records("forward_error")
        ), 60, host)  # fmt: skip
    finally:
        host.stop()
    assert stored(collector) == held  # nothing of the new journal merged
    hosts = json.loads(
        sealtrail("collector", "hosts", "--dir", str(collector.dir), "--json").stdout
    )
    (entry,) = [h for h in hosts["hosts"] if h["host"] == HOST]
    assert entry["state"] == "rollback", entry
    errors = [r.fields["error"] for r in host.records("forward_error")]
    assert errors[0] == "diverged" and "rejected" in errors, errors
