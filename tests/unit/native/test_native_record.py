"""The native record path writes exactly the journal the Python path writes.

The same raw ring-buffer records go (a) through the Python reference: ``Decoder`` ->
``event_fields`` -> ``JournalWriter.append``, and (b) through ``record_batch``: the native
encoder for the network, fork and exit events it takes, the Python path for the rest. The
journals must be byte-identical: same lines, same hashes, same seals. Records are generated
(hypothesis) across every field, including values the encoder must hand back (non-ASCII or odd
comm, exe that is not UTF-8, families other than IPv4/IPv6, results outside the JSON-safe
range), and with the agent's real process table, which forks and exits change between records.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import native
from agent.events.decode import KIND_OP, Clock, DecodeError, Decoder
from agent.events.proctable import ProcTable
from agent.journal.keys import KeyStore
from agent.journal.writer import JournalWriter
from agent.kernel import abi
from agent.native.encoder import EventEncoder
from agent.recorder import NATIVE_KINDS, event_fields, observe_native, record_batch

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


def proc_record(
    op: int,
    pid: int = 100,
    *,
    child_pid: int | None = None,
    exit_code: int = 256,
    start_ns: int = 0,
    ts_ns: int = 7,
    comm: bytes = b"sh",
    flags: int = 0,
) -> bytes:
    p = abi.Proc()
    p.hdr.op, p.hdr.size, p.hdr.pid, p.hdr.ts_ns = op, ctypes.sizeof(abi.Proc), pid, ts_ns
    p.hdr.tid, p.hdr.ppid, p.hdr.uid, p.hdr.gid = pid, 1, 0, 4294967295
    p.hdr.auid, p.hdr.ses, p.hdr.cgroup_id, p.hdr.flags = 4294967295, 7, 2**63 + 5, flags
    p.hdr.comm = comm
    p.child_pid = pid + 5 if child_pid is None else child_pid
    p.exit_code, p.start_ns = exit_code, start_ns
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
    root: Path,
    keys: Path,
    records: list[bytes],
    use_native: bool,
    host: str = "h\u00f6st-1",
    table: ProcTable | None = None,
) -> bytes:
    """The journal of ``records``; with ``table``, exes come from that process table, which
    each event updates as the stream's does (else from the fixed ``EXES``)."""
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
    lookup = table.lookup if table is not None else lambda pid, _comm: EXES.get(pid)
    decoder = Decoder(CLOCK, lookup)

    def slow(raws: list[bytes]) -> None:
        for raw in raws:
            try:
                ev = decoder.decode(raw)
            except DecodeError:
                continue  # the stream logs and counts these
            if table is not None:
                table.observe(ev)  # as EventStream._decode_all
            writer.append("event", event_fields(ev))

    if use_native:
        encoder = SmallEncoder(
            host=writer.host,
            boot_id=writer.boot_id,
            clock_offset=CLOCK.offset_ns,
            exe_of=lambda pid: lookup(pid, ""),
        )
        mask = sum(1 << KIND_OP[k] for k in NATIVE_KINDS)
        batch = b"".join(len(r).to_bytes(4, "little") + r for r in records)
        proc = (lambda raw: observe_native(table, raw)) if table is not None else None
        TAKEN.append(record_batch(writer, encoder, batch, mask, slow, proc=proc))
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
        proc_record(abi.Op.EXIT, comm=b"\xff"),  # not ASCII: handed back
    ]
    python, fast = both(tmp_path, keys, records)
    assert python == fast
    assert TAKEN[-1] == 5  # the connects of pids 100 and 102, the fork, the exit, the bind
    assert b'"escaped":true' in fast and b"\\\\xff\\\\xfe" in fast
    assert f'"result":"{1 << 60}"'.encode() in fast  # beyond 2**53: a string, not a crash


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*NET_OPS, abi.Op.FORK, abi.Op.EXIT]),
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
        if op in (abi.Op.FORK, abi.Op.EXIT):
            records.append(
                proc_record(
                    op,
                    pid,
                    child_pid=port,
                    exit_code=ret & 0xFFFF_FFFF,
                    start_ns=port * 3,
                    ts_ns=protocol * 500,
                    comm=comm.split(b"\0")[0],
                    flags=flags,
                )
            )
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


def test_fork_and_exit_events_are_byte_identical(tmp_path: Path, keys: Path) -> None:
    records = [
        proc_record(abi.Op.FORK, pid=100, child_pid=4242),
        proc_record(abi.Op.FORK, pid=101),  # exe unknown: null
        proc_record(abi.Op.EXIT, exit_code=0, start_ns=3, ts_ns=10),  # exit 0 after 7 ns
        proc_record(abi.Op.EXIT, exit_code=3 << 8, start_ns=20, ts_ns=10),  # clock: 0, not -10
        proc_record(abi.Op.EXIT, exit_code=9),  # killed by SIGKILL: exit_code null
        proc_record(abi.Op.EXIT, exit_code=0x80 | 11),  # SIGSEGV, core dumped
        proc_record(abi.Op.EXIT, pid=104, comm=b'q"\\\t', flags=abi.F_TRUNCATED),
        # on the wall clock past 2**64 ns: Python writes the big number, C hands it back
        proc_record(abi.Op.EXIT, exit_code=0xFFFF_FFFF, start_ns=2**64 - 1, ts_ns=2**64 - 1),
    ]
    python, fast = both(tmp_path, keys, records)
    assert python == fast
    assert TAKEN[-1] == len(records) - 1
    assert b'"signal":9' in fast and b'"core_dumped":true' in fast and b'"exit_code":3' in fast


#: pids above the kernel's pid_max (2**22): /proc has none of them, so the table's own lookup
#: finds nothing there, whatever runs on this machine
P, C = 5_000_000, 5_000_001


def test_forks_and_exits_change_the_exe_of_later_records_as_in_python(
    tmp_path: Path, keys: Path
) -> None:
    """The child's events after a fork name its parent's binary; a pid's events after its
    exit name none (a recycled pid is asked of /proc, not given the old binary): the native
    run ends at every fork and exit, and the process table learns it before the next."""
    records = [
        net_record(abi.Op.CONNECT, pid=P),
        proc_record(abi.Op.FORK, pid=P, child_pid=C),
        net_record(abi.Op.CONNECT, pid=C),  # the parent's binary
        proc_record(abi.Op.EXIT, pid=C),
        net_record(abi.Op.CONNECT, pid=C),  # a new process with that pid: not known
        proc_record(abi.Op.EXIT, pid=P),
        net_record(abi.Op.BIND, pid=P),
    ]
    journals = []
    for native_path in (False, True):
        table = ProcTable()
        table.forked(P, "/usr/bin/parent")
        root = tmp_path / str(native_path)
        journals.append(write_journal(root, keys, records, native_path, table=table))
        assert table.lookup(C, "") is None and table.lookup(P, "") is None
    python, fast = journals
    assert python == fast
    assert TAKEN[-1] == len(records)
    lines = [line for line in fast.splitlines() if b'"type":"event"' in line]
    exes = [json.loads(line)["exe"] for line in lines]
    assert exes == ["/usr/bin/parent"] * 4 + [None, "/usr/bin/parent", None]
