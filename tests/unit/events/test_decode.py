"""Decoding of ring-buffer records built byte-for-byte per probes/sealtrail.h (no kernel)."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import socket

import pytest

from agent.events import model
from agent.events.decode import Clock, DecodeError, Decoder
from agent.kernel import abi
from tests.unit.events.records import hdr, strings


class FixedClock(Clock):
    def __init__(self) -> None:
        self.offset_ns = 1_000


class CheckedDecoder(Decoder):
    """Every event the decoder builds (bypassing __init__ for speed) has exactly its class's
    fields and equals the event the dataclass constructor builds from the same values."""

    def decode(self, raw: bytes) -> model.Event:
        ev = super().decode(raw)
        names = {f.name for f in dataclasses.fields(ev)}
        assert set(vars(ev)) == names, (type(ev).__name__, set(vars(ev)) ^ names)
        assert ev == type(ev)(**vars(ev))
        return ev


def decoder() -> Decoder:
    return CheckedDecoder(FixedClock(), lambda pid, comm: f"/usr/bin/{comm}")


def test_exec_record() -> None:
    (exe_len, fn_len, args_len, cwd_len), data = strings(
        b"/usr/bin/true", b"./t", b"./t\0a b\0c", b"/home/x"
    )
    rec = abi.Exec(
        hdr=hdr(abi.Op.EXEC, abi.F_PATH_RESOLVED),
        exe_len=exe_len,
        filename_len=fn_len,
        args_len=args_len,
        cwd_len=cwd_len,
        argc=3,
    )
    ev = decoder().decode(bytes(rec) + data)
    assert isinstance(ev, model.ExecEvent)
    assert ev.exe == "/usr/bin/true" and ev.filename == "./t"
    assert ev.argv == ("./t", "a b", "c") and ev.argc == 3 and ev.cwd == "/home/x"
    assert (ev.pid, ev.tid, ev.ppid, ev.uid, ev.gid, ev.cgroup_id) == (10, 11, 1, 1000, 100, 7)
    assert ev.ts_ns == 1_005 and ev.comm == "worker"
    assert ev.to_dict()["argv"] == ["./t", "a b", "c"]
    assert ev.to_dict()["kind"] == "exec"


def test_relative_path_joined_to_kernel_cwd_and_marked() -> None:
    (p, p2, b, b2), data = strings(b"../etc/./passwd", b"", b"/home/user", b"")
    rec = abi.File(
        hdr=hdr(abi.Op.UNLINK, abi.F_PATH_RELATIVE),
        ret=-13,
        path_len=p,
        path2_len=p2,
        base_len=b,
        base2_len=b2,
    )
    ev = decoder().decode(bytes(rec) + data)
    assert isinstance(ev, model.UnlinkEvent)
    assert ev.path == "/home/etc/passwd" and ev.path_source == model.PATH_ARG_CWD
    assert ev.result == -13 and "EACCES" in ev.object_text()
    assert ev.exe == "/usr/bin/worker"  # from the process table lookup


def test_open_access_flags_and_kernel_path() -> None:
    (p, p2, b, b2), data = strings(b"/etc/shadow", b"", b"", b"")
    flags = 0o2 | 0o100 | 0o1000  # O_RDWR | O_CREAT | O_TRUNC
    rec = abi.File(
        hdr=hdr(abi.Op.OPEN, abi.F_PATH_RESOLVED),
        ret=3,
        flags=flags,
        mode=0o100644,
        path_len=p,
        path2_len=p2,
        base_len=b,
        base2_len=b2,
    )
    ev = decoder().decode(bytes(rec) + data)
    assert isinstance(ev, model.OpenEvent)
    assert ev.access == ("read", "write", "create", "truncate")
    assert ev.path_source == model.PATH_KERNEL and ev.mode == 0o644


def test_rename_two_paths_each_with_its_own_base() -> None:
    (p, p2, b, b2), data = strings(b"a", b"/abs/b", b"/d1", b"")
    rec = abi.File(
        hdr=hdr(abi.Op.RENAME, abi.F_PATH_RELATIVE),
        ret=0,
        path_len=p,
        path2_len=p2,
        base_len=b,
        base2_len=b2,
    )
    ev = decoder().decode(bytes(rec) + data)
    assert isinstance(ev, model.RenameEvent)
    assert (ev.path, ev.new_path) == ("/d1/a", "/abs/b")
    assert ev.new_path_source == model.PATH_ARG


@pytest.mark.parametrize(
    ("family", "raw", "text"),
    [
        (socket.AF_INET, socket.inet_pton(socket.AF_INET, "10.1.2.3"), "10.1.2.3"),
        (socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "fe80::1"), "fe80::1"),
        (
            socket.AF_INET6,
            socket.inet_pton(socket.AF_INET6, "::ffff:169.254.169.254"),
            "::ffff:169.254.169.254",  # RFC 5952 section 5: mixed notation
        ),
    ],
)
def test_connect_addresses(family: int, raw: bytes, text: str) -> None:
    rec = abi.Net(hdr=hdr(abi.Op.CONNECT), ret=0, family=family, protocol=6, sport=4000, dport=443)
    ctypes.memmove(rec.daddr, raw, len(raw))
    ev = decoder().decode(bytes(rec))
    assert isinstance(ev, model.ConnectEvent)
    assert ev.remote_addr == text and ev.remote_port == 443 and ev.protocol == "tcp"


def test_exit_status_decoding() -> None:
    killed = abi.Proc(hdr=hdr(abi.Op.EXIT), exit_code=9, start_ns=2)
    ev = decoder().decode(bytes(killed))
    assert isinstance(ev, model.ExitEvent)
    assert (ev.signal, ev.exit_code, ev.duration_ns) == (9, None, 3)
    normal = abi.Proc(hdr=hdr(abi.Op.EXIT), exit_code=3 << 8)
    ev = decoder().decode(bytes(normal))
    assert isinstance(ev, model.ExitEvent)
    assert (ev.signal, ev.exit_code) == (None, 3)


def test_malformed_records_are_errors_not_garbage() -> None:
    with pytest.raises(DecodeError, match="shorter than its header"):
        decoder().decode(b"\x01\x00")
    with pytest.raises(DecodeError, match="unknown opcode 99"):
        decoder().decode(bytes(abi.Proc(hdr=hdr(99))))  # type: ignore[arg-type]
    rec = abi.File(hdr=hdr(abi.Op.OPEN), path_len=100)
    with pytest.raises(DecodeError, match="shorter than declared"):
        decoder().decode(bytes(rec) + b"/etc")


def test_guard_verdict_record() -> None:
    exe = b"/usr/bin/curl\0"
    path = b"/etc/shadow\0"
    rec = abi.Verdict(hdr=hdr(abi.Op.VERDICT), generation=3, rule_index=5,
                      guarded_op=abi.Op.OPEN, action=abi.Action.DENY,
                      rule_action=abi.Action.DENY, mechanism=abi.Mechanism.LSM,
                      exe_len=len(exe), path_len=len(path))  # fmt: skip
    ev = decoder().decode(bytes(rec) + path + exe)
    assert isinstance(ev, model.GuardEvent)
    assert (ev.op, ev.action, ev.mechanism, ev.generation, ev.rule_index) == (
        "open",
        "deny",
        "lsm",
        3,
        5,
    )
    assert ev.path == "/etc/shadow" and ev.exe == "/usr/bin/curl"


@pytest.mark.parametrize(("flags", "source"), [(abi.F_PATH_RESOLVED, "kernel"), (0, "arg")])
def test_truncate_record(flags: int, source: str) -> None:
    (p, p2, b, b2), data = strings(b"/srv/data.db", b"", b"", b"")
    rec = abi.File(hdr=hdr(abi.Op.TRUNCATE, flags), ret=0, length=1 << 40, path_len=p,
                   path2_len=p2, base_len=b, base2_len=b2)  # fmt: skip
    ev = decoder().decode(bytes(rec) + data)
    assert isinstance(ev, model.TruncateEvent) and ev.kind == "truncate"
    assert (ev.path, ev.path_source, ev.length, ev.result) == ("/srv/data.db", source, 1 << 40, 0)


@pytest.mark.parametrize(
    ("flags", "call"), [(0, ""), (abi.F_SENDMSG, "sendmsg"), (abi.F_TRUNCATE, "truncate")]
)
def test_guard_verdict_names_the_call_judged(flags: int, call: str) -> None:
    exe = b"/usr/bin/nc\0"
    rec = abi.Verdict(hdr=hdr(abi.Op.VERDICT, abi.F_PATH_RESOLVED | flags),
                      guarded_op=abi.Op.CONNECT, action=abi.Action.DENY,
                      rule_action=abi.Action.DENY, mechanism=abi.Mechanism.CGROUP_SOCK,
                      family=socket.AF_INET, protocol=17, port=53, exe_len=len(exe))  # fmt: skip
    ev = decoder().decode(bytes(rec) + exe)
    assert isinstance(ev, model.GuardEvent) and ev.call == call


def test_exec_of_a_memfd_is_fileless_and_names_it() -> None:
    (exe_len, fn_len, args_len, cwd_len), data = strings(
        b"memfd:payload", b"/dev/fd/3", b"payload\0x", b"/tmp"
    )
    rec = abi.Exec(
        hdr=hdr(abi.Op.EXEC, abi.F_PATH_RESOLVED), exe_len=exe_len, filename_len=fn_len,
        args_len=args_len, cwd_len=cwd_len, argc=2, exec_flags=abi.EXEC_FILELESS,
    )  # fmt: skip
    ev = decoder().decode(bytes(rec) + data)
    assert isinstance(ev, model.ExecEvent)
    assert (ev.exe, ev.fileless, ev.loader_target) == ("memfd:payload", True, None)
    assert ev.to_dict()["fileless"] is True and "(fileless)" in ev.object_text()


def test_exec_of_the_loader_names_its_target() -> None:
    loader = b"/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    (exe_len, fn_len, args_len, cwd_len), data = strings(
        loader, b"/lib64/ld-linux-x86-64.so.2", b"ld\0bin/tool\0arg", b"/srv"
    )
    rec = abi.Exec(
        hdr=hdr(abi.Op.EXEC, abi.F_PATH_RESOLVED), exe_len=exe_len, filename_len=fn_len,
        args_len=args_len, cwd_len=cwd_len, argc=3,
    )  # fmt: skip
    ev = decoder().decode(bytes(rec) + data)
    assert isinstance(ev, model.ExecEvent)
    assert (ev.fileless, ev.loader_target) == (False, "/srv/bin/tool")
    assert ev.to_dict()["loader_target"] == "/srv/bin/tool"


def test_an_o_tmpfile_open_asks_for_create() -> None:
    """O_TMPFILE makes a file that linkat(2) then names: a create-guarded tree judges it
    (red team 2026-12-08: an O_TMPFILE opened in the tree was judged as a write only)."""
    from agent.events.decode import open_access

    assert open_access(os.O_TMPFILE | os.O_WRONLY) == ("write", "create")
    assert open_access(os.O_DIRECTORY) == ("read",)
