"""The collector server end to end: a real ``collector serve`` process, real mutual TLS on
loopback, real journals written by the agent's writer, the real store (SQLite and PostgreSQL).

Every batch is verified on arrival; what holds is stored exactly once and receipted, what does
not is rejected with its reason, kept aside, and never merged.
"""

from __future__ import annotations

import datetime
import http.client
import json
import shutil
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.collector import pki
from agent.collector.protocol import (
    HEAD_PATH,
    HEALTH_PATH,
    INGEST_PATH,
    LINES_TYPE,
    METRICS_PATH,
    START_HEADER,
    Receipt,
)
from agent.collector.provision import enroll_host
from agent.collector.store import open_store
from agent.journal.canonical import canonical
from agent.journal.keys import KeyStore, PublicKey
from agent.journal.merkle import CompactTree
from agent.journal.record import record_hash

from .journals import HostJournal
from .server_proc import Client, Collector


@pytest.fixture
def collector(tmp_path: Path, store_url: str) -> Iterator[Collector]:
    c = Collector(tmp_path / "coll", store=store_url)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def host_a(tmp_path: Path) -> HostJournal:
    j = HostJournal(tmp_path, "host-a")
    KeyStore(j.keys).init()
    shutil.copytree(j.keys, tmp_path / "host-a-keys-at-genesis")  # for a wipe and restart
    j.fill(600, seal_every=40, rotate_every=250)
    return j


def _enrolled(collector: Collector, journal: HostJournal, tmp_path: Path) -> Client:
    bundle = collector.enroll(journal.host, journal.pub, tmp_path / f"{journal.host}-bundle")
    collector.start() if not collector.alive() else None
    return collector.client(bundle)


def _root(lines: list[bytes]) -> str:
    tree = CompactTree()
    for line in lines:
        tree.append(record_hash(line))
    return tree.root().hex()


def _stored(collector: Collector, host: str) -> list[bytes]:
    with open_store(collector.store or "") as store:
        size = store.head(host).size
        return [line for _, line in store.records(host, 0, size)]


def test_batches_are_verified_stored_once_and_receipted(
    collector: Collector, host_a: HostJournal, tmp_path: Path
) -> None:
    client = _enrolled(collector, host_a, tmp_path)
    lines = host_a.lines()
    head = client.head()
    assert head.status == 200 and head.doc["size"] == 0 and head.doc["status"] == "ok"
    pub = PublicKey.load(tmp_path / "host-a-bundle" / "collector.pub")
    pos = 0
    while pos < len(lines):  # as the forwarder does: resume where the collector's size says
        end = min(pos + 97, len(lines))
        ans = client.ingest(pos, lines[pos:end])
        assert ans.status == 200, ans.doc
        receipt = Receipt.from_dict(ans.doc["receipt"])
        receipt.verify(pub, host="host-a")
        size = ans.doc["size"]
        # only what a seal covers is stored: up to the batch's last seal
        last_seal = max(i for i in range(end) if b'"type":"seal"' in lines[i]) + 1
        assert receipt.size == size == max(pos, last_seal)
        assert ans.doc["pending"] == end - size
        assert receipt.root == _root(lines[:size])
        assert size > pos  # seals come every ~41 lines here, so every batch holds one
        pos = size
    # a re-send of accepted records is idempotent: same bytes, nothing stored twice
    again = client.ingest(100, lines[100:300])
    assert again.status == 200 and again.doc["accepted"] == 0 and again.doc["skipped"] == 200
    assert _stored(collector, "host-a") == lines  # exactly the journal's bytes, once each
    head = client.head().doc
    assert head["size"] == len(lines) and head["last_hash"] == record_hash(lines[-1]).hex()
    assert head["checkpoint"]["checkpoint"]["size"] == len(lines) - 1  # the final seal
    metrics = client.request("GET", METRICS_PATH)
    values = {
        name: float(value)
        for name, _, value in (
            ln.partition(" ") for ln in str(metrics.doc).splitlines() if not ln.startswith("#")
        )
    }
    assert metrics.status == 200
    assert values["sealtrail_collector_records_accepted_total"] == len(lines)
    assert values["sealtrail_collector_records_resent_total"] == 200
    assert client.request("GET", HEALTH_PATH).doc["ok"] is True


def test_gap_fork_rollback_tamper_and_replay_are_rejected(
    collector: Collector, host_a: HostJournal, tmp_path: Path
) -> None:
    client = _enrolled(collector, host_a, tmp_path)
    lines = host_a.lines()
    first = client.ingest(0, lines[:200])
    held = first.doc["size"]  # up to the last seal in those 200
    assert first.status == 200 and 150 < held <= 200
    gap = client.ingest(250, lines[250:300])
    assert gap.status == 409 and gap.doc["error"] == "gap" and gap.doc["size"] == held

    forked = list(lines[150:260])
    forked[10] = forked[10].replace(b'"pid":', b'"pid":9', 1)
    fork = client.ingest(150, forked)
    assert fork.status == 422 and fork.doc["error"] == "fork" and fork.doc["seq"] == 160

    tampered = list(lines[held : held + 60])
    victim = next(i for i in range(3, 50) if b'"pid":' in tampered[i])
    tampered[victim] = tampered[victim].replace(b'"pid":', b'"pid":9', 1)
    bad = client.ingest(held, tampered)
    assert bad.status == 422 and bad.doc["error"] == "tamper", bad.doc
    assert bad.doc["seq"] == held + victim

    # a wiped journal restarted under the same genesis key: a different record 0
    wiped = HostJournal(tmp_path / "wiped", "host-a")
    wiped.keys.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tmp_path / "host-a-keys-at-genesis", wiped.keys)
    wiped.fill(30)
    rollback = client.ingest(0, wiped.lines())
    assert rollback.status == 422 and rollback.doc["error"] == "rollback"
    assert rollback.doc["seq"] == 0

    # nothing of the rejected batches was merged; they are kept aside; the head holds
    assert _stored(collector, "host-a") == lines[:held]
    with open_store(collector.store or "") as store:
        kept = store.quarantined("host-a")
        assert [q.reason.split(":")[0] for q in kept] == ["fork", "tamper", "rollback"]
        assert store.head("host-a").status == "rollback"
    # the genuine continuation is still accepted after all that
    ok = client.ingest(held, lines[held:])
    assert ok.status == 200 and ok.doc["size"] == len(lines)


def test_hostile_records_are_malformed_422_and_quarantined(
    collector: Collector, host_a: HostJournal, tmp_path: Path
) -> None:
    client = _enrolled(collector, host_a, tmp_path)
    lines = host_a.lines()
    verdict = next(i for i in range(2, 40) if b'"type":"verdict"' in lines[i])
    seal = next(i for i in range(verdict, len(lines)) if b'"type":"seal"' in lines[i])
    listed = json.loads(lines[verdict])
    listed["action"] = ["deny"]
    deep = lines[verdict][:-1] + b',"zz":' + b"[" * 5000 + b"]" * 5000 + b"}"
    hostile = json.dumps(listed, sort_keys=True, separators=(",", ":")).encode()
    for first in (False, True):  # the first line (parsed before the verifier) and a later one
        for bad in (hostile, deep):
            batch = list(lines[: seal + 1])
            batch[0 if first else verdict] = bad
            ans = client.ingest(0, batch)
            assert ans.status == 422 and ans.doc["error"] == "malformed", ans.doc
    with open_store(collector.store or "") as store:
        kept = store.quarantined("host-a")
        assert [q.reason.split(":")[0] for q in kept] == ["malformed"] * 4
    assert collector.alive() and client.ingest(0, lines).status == 200


def test_a_batch_that_does_not_chain_to_the_head_names_its_first_record(
    collector: Collector, host_a: HostJournal, tmp_path: Path
) -> None:
    client = _enrolled(collector, host_a, tmp_path)
    lines = host_a.lines()
    held = client.ingest(0, lines[:100]).doc["size"]
    batch = list(lines[held : held + 60])
    first = json.loads(batch[0])
    first["prev"] = "ab" * 32  # not the head's last hash; the next record chains to it
    batch[0] = canonical(first)
    second = json.loads(batch[1])
    second["prev"] = record_hash(batch[0]).hex()
    batch[1] = canonical(second)
    ans = client.ingest(held, batch)
    assert ans.status == 422 and ans.doc["error"] == "tamper" and ans.doc["seq"] == held
    assert ans.doc["detail"].startswith(f"record {held} in batch:{held} at byte 0: "), ans.doc
    assert f"not the hash of record {held - 1}" in ans.doc["detail"]


def test_another_hosts_records_and_foreign_keys_are_refused(
    collector: Collector, host_a: HostJournal, tmp_path: Path
) -> None:
    client_a = _enrolled(collector, host_a, tmp_path)
    host_b = HostJournal(tmp_path, "host-b")
    host_b.fill(50)
    client_b = _enrolled(collector, host_b, tmp_path)
    # host A's certificate sending host B's records
    foreign = client_a.ingest(0, host_b.lines())
    assert foreign.status == 422 and foreign.doc["error"] == "foreign-host"
    # host B's records re-signed by a key that is not chained from B's enrolled genesis key
    impostor = HostJournal(tmp_path / "impostor", "host-b")
    impostor.fill(50)
    resigned = client_b.ingest(0, impostor.lines())
    assert resigned.status == 422 and resigned.doc["error"] == "unenrolled-key"
    assert client_b.ingest(0, host_b.lines()).status == 200
    assert _stored(collector, "host-a") == []


def test_tls_refuses_no_certificate_another_ca_and_unenrolled(
    collector: Collector, host_a: HostJournal, tmp_path: Path
) -> None:
    client = _enrolled(collector, host_a, tmp_path)
    assert client.head().status == 200
    with pytest.raises((ssl.SSLError, OSError)):
        collector.client(None).head()  # no client certificate: the handshake fails
    other = Collector(tmp_path / "other-coll", store=str(tmp_path / "other.sqlite"))
    other_bundle = other.enroll("host-a", host_a.pub, tmp_path / "other-bundle")
    stranger = Client(other_bundle, collector.ca, collector.port)
    with pytest.raises((ssl.SSLError, OSError)):
        stranger.head()  # a certificate from another CA
    # a certificate of the collector's own CA that is bound to no enrolled host
    ca = pki.load_authority(collector.dir / "ca.crt", collector.dir / "ca.key")
    key = pki.new_key()
    cert = pki.issue_client(ca, key.public_key(), "host-z")
    loose = tmp_path / "loose"
    loose.mkdir()
    pki.write_key(loose / "client.key", key)
    pki.write_cert(loose / "client.crt", cert)
    ans = collector.client(loose).head()
    assert ans.status == 403 and ans.doc["error"] == "unenrolled"
    # an expired certificate of the collector's own CA, even for an enrolled key
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    expired = pki.issue_client(ca, key.public_key(), "host-z", days=1, now=old)
    pki_dir = tmp_path / "expired"
    pki_dir.mkdir()
    pki.write_key(pki_dir / "client.key", key)
    pki.write_cert(pki_dir / "client.crt", expired)
    with pytest.raises((ssl.SSLError, OSError)):
        collector.client(pki_dir).head()


def test_bad_input_gets_a_clear_4xx_and_the_server_stays_up(
    collector: Collector, host_a: HostJournal, tmp_path: Path
) -> None:
    client = _enrolled(collector, host_a, tmp_path)
    lines = host_a.lines()
    cases = [
        ({"Content-Type": "application/json"}, b"{}", 415, "content-type"),
        ({"Content-Type": LINES_TYPE}, b"x\n", 400, "bad-request"),  # no start header
        ({"Content-Type": LINES_TYPE, "Sealtrail-Start": "-1"}, b"x\n", 400, "bad-request"),
        ({"Content-Type": LINES_TYPE, "Sealtrail-Start": "0"}, b"{not json\n", 422, "malformed"),
        ({"Content-Type": LINES_TYPE, "Sealtrail-Start": "0"}, lines[0], 422, "malformed"),
        ({"Content-Type": LINES_TYPE, "Sealtrail-Start": "5"}, lines[0] + b"\n", 409, "gap"),
        (
            {"Content-Type": LINES_TYPE, "Sealtrail-Start": "0"},
            b"\n".join(lines[1:3]) + b"\n",
            422,
            "malformed",
        ),
    ]
    for headers, body, status, error in cases:
        ans = client.request("POST", INGEST_PATH, body, headers)
        assert (ans.status, ans.doc["error"]) == (status, error), (headers, body[:40], ans.doc)
    huge = client.request(
        "POST",
        INGEST_PATH,
        b"x" * (17 << 20),
        {"Content-Type": LINES_TYPE, "Sealtrail-Start": "0"},
    )
    assert huge.status == 413
    assert client.request("GET", "/v1/nothing").status == 404
    assert collector.alive() and client.ingest(0, lines).status == 200


def _held_upload(client: Client, length: int) -> ssl.SSLSocket:
    """An upload that sends its headers (Content-Length ``length``) and none of its body."""
    sock = client.ctx.wrap_socket(
        socket.create_connection(("127.0.0.1", client.port), timeout=10),
        server_hostname="127.0.0.1",
    )
    sock.sendall(
        f"POST {INGEST_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {LINES_TYPE}\r\n"
        f"{START_HEADER}: 0\r\nContent-Length: {length}\r\n\r\n".encode()
    )
    return sock


def _reserved(client: Client) -> float:
    text = str(client.request("GET", METRICS_PATH).doc)
    (line,) = [
        ln for ln in text.splitlines() if ln.startswith("sealtrail_collector_body_bytes_reserved ")
    ]
    return float(line.split()[1])


def _wait_reserved(client: Client, value: int) -> None:
    deadline = time.monotonic() + 20
    while _reserved(client) != value:
        assert time.monotonic() < deadline, f"reserved {_reserved(client)}, not {value}"
        time.sleep(0.05)


def test_one_host_cannot_hold_the_memory_or_the_places_of_others(
    collector: Collector, tmp_path: Path
) -> None:
    """Uploads are admitted before their bodies are read: at most 2 in flight per host, and
    bodies of at most 4 x body_bytes in all; beyond, 429 or 503 with Retry-After at once."""
    config = collector.dir / "collector.toml"
    text = config.read_text()
    assert "body_bytes = 16777216" in text
    config.write_text(text.replace("body_bytes = 16777216", "body_bytes = 1048576"))
    clients = {}
    for name in ("host-a", "host-b", "host-c"):
        journal = HostJournal(tmp_path, name)
        KeyStore(journal.keys).init()
        journal.fill(30, seal_every=10)
        bundle = collector.enroll(name, journal.pub, tmp_path / f"{name}-bundle")
        clients[name] = (collector.client(bundle), journal.lines())
    collector.start()
    a = clients["host-a"][0]
    b, b_lines = clients["host-b"]
    c, c_lines = clients["host-c"]
    mib = 1 << 20
    held = [_held_upload(a, mib), _held_upload(a, mib)]
    _wait_reserved(a, 2 * mib)
    third = _held_upload(a, mib)  # its body is never sent: refused on its headers alone
    answer = third.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 429 ") and "Retry-After: 1" in answer, answer
    assert '"busy"' in answer
    third.close()
    # the other hosts are served meanwhile
    ok = b.ingest(0, b_lines)
    assert ok.status == 200 and ok.doc["size"] == len(b_lines)
    held += [_held_upload(b, mib), _held_upload(b, mib)]
    _wait_reserved(a, 4 * mib)  # the whole budget of 4 x body_bytes
    busy = c.ingest(0, c_lines)
    assert busy.status == 503 and busy.doc["error"] == "busy"
    assert busy.headers["retry-after"] == "1"
    for sock in held:
        sock.close()
    _wait_reserved(a, 0)  # the places are given back when the uploads end
    ok = c.ingest(0, c_lines)
    assert ok.status == 200 and ok.doc["size"] == len(c_lines)
    assert collector.alive()


def test_a_slow_client_is_cut_off_and_others_are_served(
    tmp_path: Path, host_a: HostJournal
) -> None:
    collector = Collector(tmp_path / "slow", store=str(tmp_path / "slow.sqlite"))
    toml = collector.dir / "collector.toml"
    text = toml.read_text()
    assert "request_seconds" in text
    toml.write_text(
        "\n".join(
            "request_seconds = 2.0" if ln.startswith("request_seconds") else ln
            for ln in text.splitlines()
        )
        + "\n"
    )
    try:
        client = _enrolled(collector, host_a, tmp_path)
        ctx = client.ctx
        # headers trickled a byte at a time: the connection is closed, not held forever
        with socket.create_connection(("127.0.0.1", collector.port), timeout=10) as raw:
            tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            started = time.monotonic()
            closed = False
            for ch in b"POST /v1/ingest HTTP/1.1\r\nHost: x\r\n":
                try:
                    tls.sendall(bytes([ch]))
                except OSError:
                    closed = True
                    break
                time.sleep(0.2)
                if time.monotonic() - started > 8:
                    break
            if not closed:
                try:
                    closed = tls.recv(1) == b""
                except OSError:
                    closed = True
            assert closed and time.monotonic() - started < 10
        # a body trickled after complete headers: 408
        with socket.create_connection(("127.0.0.1", collector.port), timeout=10) as raw:
            tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            tls.sendall(
                b"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: "
                + LINES_TYPE.encode()
                + b"\r\nSealtrail-Start: 0\r\nContent-Length: 100000\r\n\r\nabc"
            )
            reply = tls.recv(4096)
            assert b" 408 " in reply.split(b"\r\n")[0]
        assert client.ingest(0, host_a.lines()).status == 200
    finally:
        collector.stop()


def test_two_collectors_on_one_postgresql_never_fork_a_host(
    tmp_path: Path, pg_url: str, host_a: HostJournal
) -> None:
    """Two serve processes on one PostgreSQL receive the same host's batches at once: each
    record is stored exactly once, in order, and the head only moves forward."""
    first = Collector(tmp_path / "c1", store=pg_url)
    second = Collector(tmp_path / "c2", store=pg_url)
    try:
        bundle = first.enroll("host-a", host_a.pub, tmp_path / "bundle")
        first.start()
        # the second collector shares the CA (same fleet): copy the first's PKI and keys
        for name in ("ca.crt", "ca.key", "server.crt", "server.key", "collector.key"):
            (second.dir / name).write_bytes((first.dir / name).read_bytes())
        second.start()
        lines = host_a.lines()
        results: list[int] = []

        def push(port: int) -> None:
            client = Client(bundle, first.ca, port)
            pos = 0
            while pos < len(lines):
                ans = client.ingest(pos, lines[pos : pos + 64])
                results.append(ans.status)
                if ans.status in (200, 409):
                    pos = ans.doc["size"]
                else:
                    raise AssertionError(ans.doc)

        threads = [threading.Thread(target=push, args=(c.port,)) for c in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert _stored(first, "host-a") == lines
        assert 200 in results
    finally:
        first.stop()
        second.stop()


def test_collector_kill_9_mid_ingest_keeps_only_whole_batches(
    collector: Collector, tmp_path: Path
) -> None:
    big = HostJournal(tmp_path, "host-a")
    big.fill(20000, seal_every=500)
    client = _enrolled(collector, big, tmp_path)
    lines = big.lines()

    def flood() -> None:
        pos = 0
        while pos < len(lines):
            try:
                ans = client.ingest(pos, lines[pos : pos + 2000])
            except OSError:
                return
            pos = ans.doc["size"] if ans.status in (200, 409) else len(lines)

    t = threading.Thread(target=flood)
    t.start()
    time.sleep(0.5)
    collector.stop(signal.SIGKILL)
    t.join(timeout=60)
    with open_store(collector.store or "") as store:
        head = store.head("host-a")
        stored = [line for _, line in store.records("host-a", 0, head.size)]
    assert stored == lines[: head.size]  # a prefix, whole batches only
    assert head.size % 2000 == 0 or head.size == len(lines)
    collector.start()
    pos = client.head().doc["size"]
    assert pos == head.size
    while pos < len(lines):
        ans = client.ingest(pos, lines[pos : pos + 2000])
        assert ans.status == 200, ans.doc
        pos = ans.doc["size"]
    assert _stored(collector, "host-a") == lines


def test_hundreds_of_agents_connected_at_once_are_each_served(
    tmp_path: Path, store_url: str
) -> None:
    """200 enrolled hosts hold a TLS connection each, all open at the same moment, then each
    asks its head and sends its journal: every one is answered, verified and stored whole."""
    hosts = 200
    collector = Collector(tmp_path / "coll", store=store_url)
    journals = []
    for n in range(hosts):
        j = HostJournal(tmp_path, f"fleet-{n:03d}")
        KeyStore(j.keys).init()
        j.fill(12, seal_every=12)
        enroll_host(collector.dir, j.host, str(j.pub), tmp_path / f"{j.host}-bundle",
                    store=store_url)  # fmt: skip
        journals.append(j)
    collector.start()
    barrier = threading.Barrier(hosts, timeout=120)
    results: dict[str, tuple[int, int]] = {}

    def agent(j: HostJournal) -> None:
        client = collector.client(tmp_path / f"{j.host}-bundle")
        conn = http.client.HTTPSConnection("127.0.0.1", client.port, context=client.ctx,
                                           timeout=120)  # fmt: skip
        try:
            conn.connect()  # the handshake: every host connected before any sends
            barrier.wait()
            conn.request("GET", HEAD_PATH)
            head = conn.getresponse()
            head.read()
            body = b"".join(line + b"\n" for line in j.lines())
            conn.request("POST", INGEST_PATH, body, {"Content-Type": LINES_TYPE,
                                                     START_HEADER: "0"})  # fmt: skip
            resp = conn.getresponse()
            results[j.host] = (head.status, resp.status)
            resp.read()
        finally:
            conn.close()

    try:
        threads = [threading.Thread(target=agent, args=(j,)) for j in journals]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert collector.alive()
        assert results == {j.host: (200, 200) for j in journals}
        for j in journals[:: hosts // 10]:
            assert _stored(collector, j.host) == j.lines()
    finally:
        collector.stop()
