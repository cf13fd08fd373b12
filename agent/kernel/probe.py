"""The capability probes of ``sealtrail doctor``: every BPF capability found by trying it.

Each BPF check LOADS a trivial program from ``probes/doctor.bpf.c`` (one per object open, the
others' autoload off), because lists in sysfs lie: the development kernel shows ``bpf`` in its
LSM list and still refuses every LSM program. Nothing is pinned; the LSM and fentry programs
are never attached.

Each check is isolated (``_isolated``): one that fails or crashes never hides the others.
``load_failure`` (which libbpf log line says why) is pure, for unit tests.
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import KernelError, SealtrailError
from agent.kernel import procfs
from agent.kernel.fanotify import (
    FAN_CLASS_CONTENT,
    FAN_MARK_ADD,
    FAN_OPEN_PERM,
    fanotify_init,
    fanotify_mark,
)

if TYPE_CHECKING:
    from agent.kernel.loader import BpfObject

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
PROBE_OBJECT = "doctor"
_TP_PROGRAM = "doctor_tp"
_SEND_SIGNAL_RODATA = ".rodata.doctor"  # one native __u32, see probes/doctor.bpf.c
_HITS_MAP = "doctor.bss"  # libbpf's name for the object's .bss (object name + ".bss")
_TRAMPOLINE_EPERM = "EPERM on load: the kernel refuses trampoline programs"
#: tp_btf/sched_prepare_exec (Linux 6.10+): the fileless-exec kill without BPF-LSM
PREPARE_EXEC_HOOK = b"btf_trace_sched_prepare_exec"


@dataclass(frozen=True)
class Check:
    """One capability: ok or not, why, and libbpf's most useful line when a load failed."""

    ok: bool
    detail: str
    errno: int | None = None
    log: str | None = None


#: Checks in report order; REQUIRED ones decide whether the agent can run.
CHECKS = (
    "btf",
    "tracefs",
    "tracepoints",
    "tp_btf",
    "ringbuf",
    "bpf_lsm",
    "fentry",
    "send_signal",
    "cgroup2",
    "cgroup_bpf",
    "cgroup_egress",
    "fanotify_perm",
    "privileges",
    "host_pid_namespace",
)
REQUIRED = ("btf", "tracepoints", "ringbuf")


def run_checks(
    cgroup2: str | None, tracefs: str | None, lsm_list: tuple[str, ...] | None
) -> dict[str, Check]:
    """Every check, in ``CHECKS`` order; the mounts and the LSM list as the report found them.

    The BPF checks run one after another because libbpf's log capture is global.
    """
    return {
        "btf": _isolated(_check_btf),
        "tracefs": _check_mount(tracefs, "tracefs", "make tracefs"),
        "tracepoints": _isolated(_check_tracepoints),
        "tp_btf": _isolated(_check_tp_btf),
        "ringbuf": _isolated(_check_ringbuf),
        "bpf_lsm": _isolated(lambda: _check_bpf_lsm(lsm_list)),
        "fentry": _isolated(lambda: _check_load_only("doctor_fentry", "fentry/do_unlinkat")),
        "send_signal": _isolated(
            lambda: _check_load_only(_TP_PROGRAM, "bpf_send_signal", send_signal=True)
        ),
        "cgroup2": _check_mount(cgroup2, "cgroup v2", "no cgroup2 entry in /proc/self/mountinfo"),
        "cgroup_bpf": _isolated(lambda: _check_load_only("doctor_cgroup", "cgroup/connect4")),
        "cgroup_egress": _isolated(
            lambda: _check_load_only("doctor_egress", "cgroup_skb/egress naming its task")
        ),
        "fanotify_perm": _isolated(_check_fanotify),
        "privileges": check_privileges(),
        "host_pid_namespace": check_host_pid_namespace(),
    }


_NOISE = (
    "created successfully",
    "skipped loading",
    "loading kernel BTF",
    "ulimit -l",  # libbpf's guess for any EPERM; misleading when the kernel refuses the type
    "failed to load object",
    "PROG LOAD LOG",
)
_VERIFIER_TRAILER = ("processed ", "verification time", "stack depth")


def load_failure(lines: Sequence[str], program: str) -> str | None:
    """The most useful line of libbpf's log for a failed load of ``program``.

    The verifier's own complaint (the last line of its log before the statistics) wins;
    otherwise libbpf's first line about the program that is not noise.
    """
    text = "\n".join(lines).splitlines()
    if any("BEGIN PROG LOAD LOG" in line for line in text):
        start = next(i for i, line in enumerate(text) if "BEGIN PROG LOAD LOG" in line)
        end = next(
            (i for i, line in enumerate(text) if "END PROG LOAD LOG" in line and i > start),
            len(text),
        )
        verifier = [line.strip() for line in text[start + 1 : end]]
        useful = [ln for ln in verifier if ln and not ln.startswith(_VERIFIER_TRAILER)]
        if useful:
            return useful[-1]
    candidates = [line.strip() for line in text if not any(n in line for n in _NOISE)]
    candidates = [line for line in candidates if line]
    about = [line for line in candidates if f"'{program}'" in line]
    if about:
        return about[0]
    return candidates[0] if candidates else None


def btf_has_name(name: bytes) -> bool:
    """Does the kernel's BTF name ``name`` (a function, or ``btf_trace_<tracepoint>`` for a
    tp_btf hook)? A whole name in the NUL-delimited string table; False without BTF."""
    try:
        return b"\0" + name + b"\0" in BTF_PATH.read_bytes()
    except OSError:
        return False


# ---- checks (each may raise; _isolated turns that into a failed Check) ----


def _isolated(check: Callable[[], Check]) -> Check:
    try:
        return check()
    except KernelError as exc:
        return Check(False, str(exc).splitlines()[0], exc.errno or None)
    except SealtrailError as exc:
        return Check(False, str(exc).splitlines()[0])
    except Exception as exc:  # a doctor must report, not crash: one check never hides another
        return Check(False, f"check crashed: {type(exc).__name__}: {exc}")


def _check_btf() -> Check:
    if not BTF_PATH.is_file():
        return Check(False, f"{BTF_PATH} missing: kernel built without CONFIG_DEBUG_INFO_BTF")
    size = BTF_PATH.stat().st_size
    return Check(True, f"{BTF_PATH} ({size / 2**20:.1f} MiB)")


def _check_mount(path: str | None, what: str, hint: str) -> Check:
    if path is None:
        return Check(False, f"{what} not mounted ({hint})")
    return Check(True, f"mounted at {path}")


def _load(program: str, *, send_signal: bool = False) -> BpfObject | Check:
    """Open the doctor object and load only ``program``: the loaded object (the caller
    closes it) or the failed Check that says why the kernel refused it."""
    # Imported here: without libbpf.so.1 the BPF checks fail, the others still run.
    from agent.kernel.loader import BpfObject, object_path

    obj = BpfObject(object_path(PROBE_OBJECT))
    try:
        obj.only_load(lambda name, _section: name == program)
        if send_signal:
            obj.set_rodata(_SEND_SIGNAL_RODATA, bytes(ctypes.c_uint32(1)))
        obj.load()
    except KernelError as exc:
        obj.close()
        # BpfObject.load puts libbpf's log (verifier output included) after the first line.
        log = load_failure(str(exc).splitlines()[1:], program)
        err = exc.errno or None
        return Check(False, _load_reason(program, err), err, log)
    except BaseException:
        obj.close()
        raise
    return obj


_CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 21, 38, 39
_UNPRIVILEGED = ": not privileged (needs root, or CAP_BPF + CAP_PERFMON)"


def _effective() -> int:
    """This process's effective capability set (0 if /proc cannot say)."""
    try:
        return procfs.effective_capabilities(procfs.read_status("self"))
    except OSError:
        return 0


def _privileged() -> bool:
    """CAP_SYS_ADMIN, or CAP_BPF + CAP_PERFMON: an EPERM then means the kernel said no."""
    eff = _effective()
    return bool(eff >> _CAP_SYS_ADMIN & 1) or bool(eff >> _CAP_BPF & eff >> _CAP_PERFMON & 1)


#: Capabilities whose absence changes how the agent judges rather than whether it loads (a
#: load that needs CAP_BPF, CAP_PERFMON or CAP_NET_ADMIN fails its own check), and what each
#: costs; the unit file (packaging/sealtrail-agent.service) grants all of them.
_JUDGING_CAPS = (
    (21, "CAP_SYS_ADMIN", "no fanotify permission events: open and exec rules without BPF-LSM "
     "take their fallback (fanotify_perm fails)"),
    (19, "CAP_SYS_PTRACE", "/proc/PID/exe of other users' tasks is refused: rules with an exe "
     "subject judge those tasks fail-closed (verdicts say exe_unknown)"),
    (5, "CAP_KILL", "kills from userspace (fallback = \"kill\", after the fact) fail for other "
     "users' processes"),
    (2, "CAP_DAC_READ_SEARCH", "marks on files the agent may not read by name cannot be "
     "verified or removed by handle (open_by_handle_at)"),
)  # fmt: skip


def check_privileges() -> Check:
    """Does the agent hold every capability its judgement relies on? Not required to run:
    each missing one is named with what it changes (docs/doctor.md)."""
    eff = _effective()
    missing = [f"{name}: {cost}" for bit, name, cost in _JUDGING_CAPS if not eff >> bit & 1]
    if missing:
        return Check(False, "missing " + "; ".join(missing))
    return Check(True, ", ".join(name for _, name, _ in _JUDGING_CAPS) + " held")


def missing_capabilities() -> list[str]:
    """The names of the judging capabilities (``_JUDGING_CAPS``) this process lacks."""
    eff = _effective()
    return [name for bit, name, _ in _JUDGING_CAPS if not eff >> bit & 1]


#: The initial PID namespace's inode number (include/linux/proc_ns.h: PROC_PID_INIT_INO).
PROC_PID_INIT_INO = 0xEFFFFFFC


def check_host_pid_namespace() -> Check:
    """Is the agent in the host's PID namespace? The kernel's hooks and tracepoints see every
    task on the host and report pids as the host numbers them; from a container's PID namespace
    those numbers name other processes (or none), so a kill by pid would miss or hit the wrong
    process, and the agent judges the host's tasks, not only the container's."""
    try:
        ino = os.stat("/proc/self/ns/pid").st_ino
    except OSError as exc:
        return Check(False, f"/proc/self/ns/pid: {os.strerror(exc.errno or 0)}", exc.errno)
    if ino == PROC_PID_INIT_INO:
        return Check(True, "the host's PID namespace: kernel pids name the same processes here")
    return Check(
        False,
        f"a PID namespace of its own (pid:[{ino}], a container): the kernel's hooks judge every "
        "process on the host, events carry the host's pids, and kills by pid from userspace "
        "are off (rules needing them are refused in enforce mode); run the agent on the host "
        "or with the host's PID namespace",
    )


def _load_reason(program: str, err: int | None) -> str:
    if err == errno.EPERM and not _privileged():
        return f"EPERM on load{_UNPRIVILEGED} (errno {err})"
    if err == errno.EPERM and program in ("doctor_lsm", "doctor_fentry"):
        return f"{_TRAMPOLINE_EPERM} (errno {err})"
    if err in (errno.ESRCH, errno.ENOENT):
        return f"attach target not in kernel BTF: {os.strerror(err)} (errno {err})"
    if err:
        return f"refused on load: {os.strerror(err)} (errno {err})"
    return "refused on load"


def _check_load_only(program: str, what: str, *, send_signal: bool = False) -> Check:
    obj = _load(program, send_signal=send_signal)
    if isinstance(obj, Check):
        return obj
    obj.close()
    return Check(True, f"{what} loads")


def _check_tracepoints() -> Check:
    obj = _load(_TP_PROGRAM)
    if isinstance(obj, Check):
        return obj
    with obj:
        obj.attach(_TP_PROGRAM)
        os.getpid()  # a real getpid(2): glibc does not cache it
        raw = obj.map(_HITS_MAP).lookup(bytes(4))
    hits = int.from_bytes(raw or bytes(8), "little")
    if hits == 0:
        return Check(False, "tp/syscalls/sys_enter_getpid attached but never fired")
    return Check(True, "tp/syscalls/sys_enter_getpid loaded, attached and fired")


def _check_tp_btf() -> Check:
    obj = _load("doctor_tp_btf")
    if isinstance(obj, Check):
        return obj
    with obj:
        obj.attach("doctor_tp_btf")
    return Check(True, "tp_btf/sched_process_exec loaded and attached")


def _check_ringbuf() -> Check:
    from agent.kernel.loader import BPF_MAP_TYPE_RINGBUF, Map

    try:
        Map.create(BPF_MAP_TYPE_RINGBUF, "doctor_ringbuf", 0, 0, 4096).close()
    except KernelError as exc:
        err = exc.errno
        hint = ""
        if err == errno.EINVAL:
            hint = ": kernel older than 5.8?"
        elif err == errno.EPERM and not _privileged():
            hint = _UNPRIVILEGED
        return Check(False, f"ring buffer map refused: {os.strerror(err)} (errno {err}){hint}", err)
    return Check(True, "BPF_MAP_TYPE_RINGBUF map created")


def _check_bpf_lsm(lsm_list: tuple[str, ...] | None) -> Check:
    check = _check_load_only("doctor_lsm", "lsm/file_open")
    if check.ok and lsm_list is not None and "bpf" not in lsm_list:
        return Check(
            False,
            "lsm/file_open loads, but 'bpf' is not in the active LSM list: "
            "add it to lsm= on the kernel command line",
        )
    return check


def _check_fanotify() -> Check:
    try:
        fd = fanotify_init(FAN_CLASS_CONTENT, os.O_RDONLY)
    except KernelError as exc:
        err = exc.errno
        why = ""
        if err == errno.EPERM and not _effective() >> _CAP_SYS_ADMIN & 1:
            why = ": the agent lacks CAP_SYS_ADMIN (no finer capability grants permission events)"
        return Check(False, f"fanotify_init(FAN_CLASS_CONTENT): {os.strerror(err)}{why}", err)
    try:
        # Nobody opens the marked file while the mark exists, so no event ever waits on us.
        with tempfile.NamedTemporaryFile(prefix="sealtrail-doctor-") as tmp:
            try:
                fanotify_mark(fd, FAN_MARK_ADD, FAN_OPEN_PERM, tmp.name)
            except KernelError as exc:
                err = exc.errno
                why = ": no CONFIG_FANOTIFY_ACCESS_PERMISSIONS?" if err == errno.EINVAL else ""
                return Check(False, f"fanotify_mark(FAN_OPEN_PERM): {os.strerror(err)}{why}", err)
    finally:
        os.close(fd)
    return Check(True, "fanotify_init(FAN_CLASS_CONTENT) + fanotify_mark(FAN_OPEN_PERM) work")
