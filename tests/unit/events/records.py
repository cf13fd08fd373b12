"""Ring-buffer records built byte for byte per probes/sealtrail.h, for tests without a kernel."""

from __future__ import annotations

import socket

from agent.kernel import abi


def hdr(op: abi.Op, flags: int = 0, *, pid: int = 10, comm: bytes = b"worker") -> abi.Hdr:
    return abi.Hdr(
        op=op,
        flags=flags,
        ts_ns=5,
        pid=pid,
        tid=pid + 1,
        ppid=1,
        uid=1000,
        gid=100,
        cgroup_id=7,
        comm=comm,
    )


def strings(*parts: bytes) -> tuple[list[int], bytes]:
    lens = [len(p) + 1 if p else 0 for p in parts]
    return lens, b"".join(p + b"\0" if p else b"" for p in parts)


def exec_record(pid: int, exe: bytes, *argv: bytes) -> bytes:
    (exe_len, fn_len, args_len, cwd_len), data = strings(exe, exe, b"\0".join(argv), b"/")
    rec = abi.Exec(
        hdr=hdr(abi.Op.EXEC, abi.F_PATH_RESOLVED, pid=pid),
        exe_len=exe_len,
        filename_len=fn_len,
        args_len=args_len,
        cwd_len=cwd_len,
        argc=len(argv),
    )
    return bytes(rec) + data


def proc_record(op: abi.Op, pid: int) -> bytes:
    return bytes(abi.Proc(hdr=hdr(op, pid=pid), child_pid=pid + 1, exit_code=0))


def connect_record(pid: int, port: int, op: abi.Op = abi.Op.CONNECT) -> bytes:
    rec = abi.Net(hdr=hdr(op, pid=pid), family=socket.AF_INET, protocol=6, dport=port)
    rec.daddr[:4] = [127, 0, 0, 1]
    return bytes(rec)


def batch(records: list[bytes]) -> bytes:
    """Records as the native sampler hands them out: ``[u32 size][bytes]`` each."""
    return b"".join(len(r).to_bytes(4, "little") + r for r in records)


def guard_record(pid: int, port: int) -> bytes:
    """A connect the in-kernel guard denied, as it reports it."""
    exe = b"/usr/bin/curl\0"
    rec = abi.Verdict(hdr=hdr(abi.Op.VERDICT, pid=pid), guarded_op=abi.Op.CONNECT,
                      action=abi.Action.DENY, rule_action=abi.Action.DENY,
                      mechanism=abi.Mechanism.CGROUP_SOCK, family=socket.AF_INET, protocol=6,
                      port=port, exe_len=len(exe))  # fmt: skip
    rec.addr[10:16] = [0xFF, 0xFF, 127, 0, 0, 1]
    return bytes(rec) + exe
