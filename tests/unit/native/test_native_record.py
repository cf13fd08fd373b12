"""The native record path writes exactly the journal the Python path writes.

The same raw ring-buffer records go (a) through the Python reference: ``Decoder`` ->
``event_fields`` -> ``JournalWriter.append``, and (b) through ``record_batch``: the native
encoder for the network events it takes, the Python path for the rest. The journals must be
byte-identical: same lines, same hashes, same seals. Records are generated (hypothesis) across
every field, including values the encoder must hand back (non-ASCII or odd comm, exe that is
not UTF-8, families other than IPv4/IPv6, results outside the JSON-safe range).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import native
from agent.events.decode import KIND_OP, Clock, DecodeError, Decoder
from agent.journal.keys import KeyStore
from agent.journal.writer import JournalWriter
from agent.kernel import abi
from agent.native.encoder import EventEncoder
from agent.recorder import NATIVE_KINDS, event_fields, record_batch

pytestmark = pytest.mark.skipif(
    not native.available() and not os.environ.get("CI"),
    reason="native core not built (make native)",
)

NET_OPS = [abi.Op.CONNECT, abi.Op.BIND, abi.Op.LISTEN, abi.Op.ACCEPT]
EXES: dict[int, str | None] = {
    100: "/usr/bin/curl",
    101: None,
    102: "/opt/caf\u00e9/bin/x",  # non-ASCII, valid UTF-8
    103: "/tmp/\udcff\udcfe",  # not UTF-8 (surrogateescape): the Python path escapes it
    104: '/tmp/a"b\\c',
    106: "/" + "\\\x01" * 1400,  # 8400 bytes of JSON: more than a small output buffer holds
}
CLOCK = Clock()
TS = 1_795_000_000_123_456_789


def net_record(
    op: int,
    *,
    pid: int = 100,
    family: int = socket.AF_INET,
    protocol: int = 6,
    comm: bytes = b"curl",
    ret: int = 0,
    flags: int = 0,
    saddr: bytes = b"\x7f\0\0\x01" + bytes(12),
    daddr: bytes = b"\x0a\0\0\x02" + bytes(12),
    sport: int = 40000,
    dport: int = 443,
    backlog: int = 0,
    ts_ns: int = 5_000_000_000,
    cgroup_id: int = 1 << 40,
) -> bytes:
    n = abi.Net()
    h = n.hdr
    h.op, h.flags, h.size, h.ts_ns = op, flags, ctypes.sizeof(abi.Net), ts_ns
    h.pid, h.tid, h.ppid, h.uid, h.gid, h.cgroup_id = pid, pid + 1, 1, 1000, 1000, cgroup_id
    h.comm = comm
    n.ret, n.family, n.protocol, n.sport, n.dport = ret, family, protocol, sport, dport
    ctypes.memmove(n.saddr, saddr, 16)
    ctypes.memmove(n.daddr, daddr, 16)
    n.backlog, n.sock_type = backlog, 1
    return bytes(n)


def proc_record(op: int, pid: int = 100) -> bytes:
    p = abi.Proc()
    p.hdr.op, p.hdr.size, p.hdr.pid, p.hdr.ts_ns = op, ctypes.sizeof(abi.Proc), pid, 7
    p.hdr.comm = b"sh"
    p.child_pid, p.exit_code = pid + 5, 256
    return bytes(p)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys"
    KeyStore(path).init()
    return path


TAKEN: list[int] = []


class SmallEncoder(EventEncoder):
    OUT_CAP = 8192  # fills after a few lines: runs stop and resume (ENC_FULL)


def write_journal(
    root: Path, keys: Path, records: list[bytes], use_native: bool, host: str = "h\u00f6st-1"
) -> bytes:
    shutil.copytree(keys, root / "keys")
    writer = JournalWriter.open(
        root / "journal",
        root / "keys",
        host=host,
        boot_id="b-1",
        protect_files=False,
        seal_every=7,
        seal_interval=3600.0,
        clock=lambda: TS,
        use_native=use_native,
    )
    decoder = Decoder(CLOCK, lambda pid, _comm: EXES.get(pid))

    def slow(raws: list[bytes]) -> None:
        for raw in raws:
            try:
                ev = decoder.decode(raw)
            except DecodeError:
                continue  # the stream logs and counts these
            writer.append("event", event_fields(ev))

    if use_native:
        encoder = SmallEncoder(
            host=writer.host,
            boot_id=writer.boot_id,
            clock_offset=CLOCK.offset_ns,
            exe_of=EXES.get,
        )
        mask = sum(1 << KIND_OP[k] for k in NATIVE_KINDS)
        batch = b"".join(len(r).to_bytes(4, "little") + r for r in records)
        TAKEN.append(record_batch(writer, encoder, batch, mask, slow))
    else:
        slow(records)
    writer.close({"reason": "test"})
    return b"".join(p.read_bytes() for p in sorted((root / "journal").iterdir()))


def both(
    tmp: Path, keys: Path, records: list[bytes], host: str = "h\u00f6st-1"
) -> tuple[bytes, bytes]:
    a = write_journal(tmp / "python", keys, records, False, host)
    b = write_journal(tmp / "native", keys, records, True, host)
    return a, b


def test_output_buffer_limits_are_kept(tmp_path: Path, keys: Path) -> None:
    """Lines that outgrow the output buffer are never written past it: a full buffer ends the
    run (and the next run goes on), a line that could never fit goes the Python way."""
    records = [net_record(abi.Op.CONNECT, pid=100, dport=i) for i in range(60)]
    records[30:30] = [net_record(abi.Op.CONNECT, pid=106)]
    python, fast = both(tmp_path, keys, records, host="h" * 3000)
    assert python == fast
    assert TAKEN[-1] == 60  # all but the one with the 8 KiB exe


def test_network_events_are_byte_identical(tmp_path: Path, keys: Path) -> None:
    records = [net_record(op, pid=pid) for op in NET_OPS for pid in (100, 101, 104)] + [
        net_record(abi.Op.LISTEN, backlog=511),
        net_record(
            abi.Op.CONNECT,
            family=socket.AF_INET6,
            saddr=bytes(15) + b"\x01",
            daddr=bytes(10) + b"\xff\xff\x7f\0\0\x01",
        ),
        net_record(abi.Op.CONNECT, protocol=99, ret=-111, flags=abi.F_TRUNCATED),
        net_record(abi.Op.CONNECT, comm=b'q"u\\o\x01\x7f\t'),
    ]
    python, fast = both(tmp_path, keys, records)
    assert python == fast
    assert python.count(b'"type":"event"') == len(records)
    assert TAKEN[-1] == len(records)  # every one went the native way


def test_records_the_encoder_hands_back_keep_their_place(tmp_path: Path, keys: Path) -> None:
    records = [
        net_record(abi.Op.CONNECT),
        proc_record(abi.Op.FORK),
        net_record(abi.Op.CONNECT, pid=102),  # non-ASCII exe: fine, Python encodes it
        net_record(abi.Op.CONNECT, pid=103),  # exe not UTF-8: Python path, escaped
        net_record(abi.Op.CONNECT, comm="caf\u00e9".encode()),  # non-ASCII comm
        net_record(abi.Op.CONNECT, family=1),  # AF_UNIX: undecodable, skipped by both
        net_record(abi.Op.CONNECT, ret=1 << 60),  # outside the JSON-safe range: handed back
        proc_record(abi.Op.EXIT),
        net_record(abi.Op.BIND),
    ]
    python, fast = both(tmp_path, keys, records)
    assert python == fast
    assert TAKEN[-1] == 3  # the two connects of pids 100 and 102, the bind
    assert b'"escaped":true' in fast and b"\\\\xff\\\\xfe" in fast
    assert f'"result":"{1 << 60}"'.encode() in fast  # beyond 2**53: a string, not a crash


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*NET_OPS, abi.Op.FORK]),
            st.sampled_from([*sorted(EXES), 105]),
            st.sampled_from([socket.AF_INET, socket.AF_INET6]),
            st.integers(0, 300),
            st.binary(min_size=0, max_size=16),
            st.integers(-(2**31), 2**31),
            st.binary(min_size=16, max_size=16),
            st.integers(0, 65535),
            st.integers(0, 3),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_generated_batches_are_byte_identical(
    tmp_path_factory: pytest.TempPathFactory,
    keys: Path,
    specs: list[tuple],  # type: ignore[type-arg]
) -> None:
    records = []
    for op, pid, family, protocol, comm, ret, addr, port, flags in specs:
        if op == abi.Op.FORK:
            records.append(proc_record(op, pid))
            continue
        records.append(
            net_record(
                op,
                pid=pid,
                family=family,
                protocol=protocol,
                comm=comm.split(b"\0")[0],
                ret=ret,
                saddr=addr,
                daddr=addr[::-1],
                sport=port,
                dport=65535 - port,
                flags=flags,
                backlog=port,
            )
        )
    python, fast = both(tmp_path_factory.mktemp("gen"), keys, records)
    assert python == fast
