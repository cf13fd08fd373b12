"""What this host supports, found by trying, and the mechanisms the agent will use.

``probe_host()`` is what ``sealtrail doctor`` prints and what the daemon calls at start. Every
BPF capability is tested by LOADING a trivial program from ``probes/doctor.bpf.c`` (one per
object open, the others' autoload off), because lists in sysfs lie: the development kernel
shows ``bpf`` in its LSM list and still refuses every LSM program. Nothing is pinned; the LSM
and fentry programs are never attached.

Each check is isolated (``_isolated``): one that fails or crashes never hides the others.
The parsers (``parse_mounts``, ``parse_lockdown``, ``parse_lsm_list``, ``load_failure``) and
``derive_plan`` are pure, for unit tests. JSON schema: docs/doctor.md.
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import KernelError, SealtrailError

if TYPE_CHECKING:
    from agent.kernel.loader import BpfObject

SCHEMA_VERSION = 1

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
SECURITYFS = Path("/sys/kernel/security")
PROBE_OBJECT = "doctor"
_TP_PROGRAM = "doctor_tp"
_SEND_SIGNAL_RODATA = ".rodata.doctor"  # one native __u32, see probes/doctor.bpf.c
_HITS_MAP = "doctor.bss"  # libbpf's name for the object's .bss (object name + ".bss")
_BPF_MAP_TYPE_RINGBUF = 27  # enum bpf_map_type, stable UAPI
_TRAMPOLINE_EPERM = "EPERM on load: the kernel refuses trampoline programs"


# ---- report types ----


@dataclass(frozen=True)
class Check:
    """One capability: ok or not, why, and libbpf's most useful line when a load failed."""

    ok: bool
    detail: str
    errno: int | None = None
    log: str | None = None


@dataclass(frozen=True)
class Plan:
    """The mechanism per capability. Enforcement values: lsm, cgroup-bpf, fanotify,
    bpf_send_signal, none."""

    events: tuple[str, ...]
    enforcement: dict[str, str]
    #: Always False: the agent pins nothing, so no mechanism enforces after it exits.
    survives_agent: bool
    notes: tuple[str, ...]


@dataclass(frozen=True)
class HostReport:
    kernel_release: str
    kernel_version: str
    machine: str
    libbpf_version: str | None
    btf_path: str | None
    cgroup2_path: str | None
    tracefs_path: str | None
    securityfs: bool
    lockdown: str
    lsm_list: tuple[str, ...] | None
    checks: dict[str, Check]
    plan: Plan
    elapsed_ms: float

    @property
    def can_run(self) -> bool:
        """The agent needs BTF (CO-RE), tracepoints and a ring buffer; everything else is extra."""
        return all(self.checks[name].ok for name in REQUIRED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "can_run": self.can_run,
            "host": {
                "kernel_release": self.kernel_release,
                "kernel_version": self.kernel_version,
                "machine": self.machine,
                "libbpf_version": self.libbpf_version,
                "btf_path": self.btf_path,
                "cgroup2_path": self.cgroup2_path,
                "tracefs_path": self.tracefs_path,
                "securityfs": self.securityfs,
                "lockdown": self.lockdown,
                "lsm_list": list(self.lsm_list) if self.lsm_list is not None else None,
            },
            "checks": {name: asdict(check) for name, check in self.checks.items()},
            "plan": {
                "events": list(self.plan.events),
                "enforcement": dict(self.plan.enforcement),
                "survives_agent": self.plan.survives_agent,
                "notes": list(self.plan.notes),
            },
            "elapsed_ms": round(self.elapsed_ms, 1),
        }


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
    "fanotify_perm",
)
REQUIRED = ("btf", "tracepoints", "ringbuf")
#: Operations in the enforcement plan (DESIGN.md section 3).
OPERATIONS = ("exec", "open", "unlink", "rename", "chmod", "chown", "network", "kill")


# ---- pure parsers ----


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    options: tuple[str, ...] = field(default=())


def _unescape(text: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(text):
        digits = text[i + 1 : i + 4]
        if text[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mounts(text: str) -> list[Mount]:
    """Entries of /proc/mounts (or /proc/self/mounts) text, in order; malformed lines skipped."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        source, target, fstype, options = parts[:4]
        mounts.append(
            Mount(_unescape(source), _unescape(target), fstype, tuple(options.split(",")))
        )
    return mounts


def find_mount(mounts: Iterable[Mount], fstype: str, prefer: str | None = None) -> str | None:
    """Mount point of the first ``fstype`` mount (``prefer`` wins if it is one of them)."""
    targets = [m.target for m in mounts if m.fstype == fstype]
    if prefer in targets:
        return prefer
    return targets[0] if targets else None


def parse_lockdown(text: str) -> str:
    """``none [integrity] confidentiality`` -> ``integrity`` (the bracketed mode)."""
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return "unknown"


def parse_lsm_list(text: str) -> tuple[str, ...]:
    """``lockdown,capability,bpf`` -> its names, in order."""
    return tuple(name for name in text.strip().split(",") if name)


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


def derive_plan(checks: dict[str, Check]) -> Plan:
    """The mechanism the agent will use per capability (DESIGN.md section 3)."""

    def ok(name: str) -> bool:
        return name in checks and checks[name].ok

    events = tuple(name for name in ("tracepoints", "tp_btf") if ok(name))
    network = "cgroup-bpf" if ok("cgroup_bpf") and ok("cgroup2") else "none"
    notes = []
    if ok("bpf_lsm"):
        enforcement = dict.fromkeys(OPERATIONS, "lsm")
        if network == "cgroup-bpf":
            enforcement["network"] = network  # first choice even with LSM: EPERM at connect()
    else:
        fanotify = "fanotify" if ok("fanotify_perm") else "none"
        enforcement = {"exec": fanotify, "open": fanotify}
        enforcement.update(dict.fromkeys(("unlink", "rename", "chmod", "chown"), "none"))
        enforcement["network"] = network
        notes.append(
            "unlink/rename/chmod/chown cannot be denied without BPF-LSM: "
            "only SIGKILL after the fact, flagged as such"
        )
    enforcement["kill"] = "bpf_send_signal" if ok("send_signal") else "none"
    if set(enforcement.values()) != {"none"}:
        notes.append(
            "enforcement does not survive the agent: nothing is pinned, so its LSM and cgroup "
            "programs are detached and its fanotify marks removed when it exits, and the kernel "
            "allows what the rules deny until it runs again (a supervisor restarts it)"
        )
    if "tp_btf" not in events and events:
        notes.append("no tp_btf: process lifecycle events (exec/fork/exit) unavailable")
    return Plan(events, enforcement, False, tuple(notes))


# ---- checks (each may raise; _isolated turns that into a failed Check) ----


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _isolated(check: Callable[[], Check]) -> Check:
    try:
        return check()
    except KernelError as exc:
        return Check(False, str(exc).splitlines()[0], exc.errno or None)
    except SealtrailError as exc:
        return Check(False, str(exc).splitlines()[0])
    except Exception as exc:  # a doctor must report, not crash: one check never hides another
        return Check(False, f"check crashed: {type(exc).__name__}: {exc}")


def btf_has_name(name: bytes) -> bool:
    """Does the kernel's BTF name ``name`` (a function, or ``btf_trace_<tracepoint>`` for a
    tp_btf hook)? A whole name in the NUL-delimited string table; False without BTF."""
    try:
        return b"\0" + name + b"\0" in BTF_PATH.read_bytes()
    except OSError:
        return False


#: tp_btf/sched_prepare_exec (Linux 6.10+): the fileless-exec kill without BPF-LSM
PREPARE_EXEC_HOOK = b"btf_trace_sched_prepare_exec"


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


def _privileged() -> bool:
    """CAP_SYS_ADMIN, or CAP_BPF + CAP_PERFMON: an EPERM then means the kernel said no."""
    status = _read(Path("/proc/self/status")) or ""
    caps = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("CapEff:")), "0")
    eff = int(caps, 16)
    return bool(eff >> _CAP_SYS_ADMIN & 1) or bool(eff >> _CAP_BPF & eff >> _CAP_PERFMON & 1)


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
    from agent.kernel.libbpf import lib

    create = lib["bpf_map_create"]  # a private handle: its argtypes stay local to this module
    create.restype = ctypes.c_int
    u32 = ctypes.c_uint32
    create.argtypes = [ctypes.c_int, ctypes.c_char_p, u32, u32, u32, ctypes.c_void_p]
    fd = int(create(_BPF_MAP_TYPE_RINGBUF, b"doctor_ringbuf", 0, 0, 4096, None))
    if fd < 0:
        err = -fd
        hint = ""
        if err == errno.EINVAL:
            hint = ": kernel older than 5.8?"
        elif err == errno.EPERM and not _privileged():
            hint = _UNPRIVILEGED
        return Check(False, f"ring buffer map refused: {os.strerror(err)} (errno {err}){hint}", err)
    os.close(fd)
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


# fanotify(7) constants
_FAN_CLASS_CONTENT = 0x04
_FAN_MARK_ADD = 0x01
_FAN_OPEN_PERM = 0x00010000
_AT_FDCWD = -100


def _check_fanotify() -> Check:
    libc = ctypes.CDLL(None, use_errno=True)
    init = libc.fanotify_init
    init.restype, init.argtypes = ctypes.c_int, [ctypes.c_uint, ctypes.c_uint]
    mark = libc.fanotify_mark
    mark.restype = ctypes.c_int
    mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    fd = init(_FAN_CLASS_CONTENT, os.O_RDONLY)
    if fd < 0:
        err = ctypes.get_errno()
        return Check(False, f"fanotify_init(FAN_CLASS_CONTENT): {os.strerror(err)}", err)
    try:
        # Nobody opens the marked file while the mark exists, so no event ever waits on us.
        with tempfile.NamedTemporaryFile(prefix="sealtrail-doctor-") as tmp:
            if mark(fd, _FAN_MARK_ADD, _FAN_OPEN_PERM, _AT_FDCWD, os.fsencode(tmp.name)) < 0:
                err = ctypes.get_errno()
                why = ": no CONFIG_FANOTIFY_ACCESS_PERMISSIONS?" if err == errno.EINVAL else ""
                return Check(False, f"fanotify_mark(FAN_OPEN_PERM): {os.strerror(err)}{why}", err)
    finally:
        os.close(fd)
    return Check(True, "fanotify_init(FAN_CLASS_CONTENT) + fanotify_mark(FAN_OPEN_PERM) work")


# ---- the report ----


def _libbpf_version() -> str | None:
    try:
        from agent.kernel import libbpf
    except SealtrailError:
        return None
    return libbpf.version()


def probe_host() -> HostReport:
    """Probe this host; never raises for a missing capability.

    About 0.1 s as root, most of it the kernel detaching the syscall tracepoint (RCU grace
    period); the BPF checks run one after another because libbpf's log capture is global.
    """
    start = time.perf_counter()
    uname = os.uname()
    mounts = parse_mounts(_read(Path("/proc/self/mounts")) or "")
    cgroup2 = find_mount(mounts, "cgroup2", prefer="/sys/fs/cgroup")
    tracefs = find_mount(mounts, "tracefs", prefer="/sys/kernel/tracing")
    securityfs = find_mount(mounts, "securityfs") is not None
    lockdown_text = _read(SECURITYFS / "lockdown")
    lsm_text = _read(SECURITYFS / "lsm")
    lsm_list = parse_lsm_list(lsm_text) if lsm_text is not None else None

    checks = {
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
        "cgroup2": _check_mount(cgroup2, "cgroup v2", "no cgroup2 entry in /proc/mounts"),
        "cgroup_bpf": _isolated(lambda: _check_load_only("doctor_cgroup", "cgroup/connect4")),
        "fanotify_perm": _isolated(_check_fanotify),
    }
    return HostReport(
        kernel_release=uname.release,
        kernel_version=uname.version,
        machine=uname.machine,
        libbpf_version=_libbpf_version(),
        btf_path=str(BTF_PATH) if checks["btf"].ok else None,
        cgroup2_path=cgroup2,
        tracefs_path=tracefs,
        securityfs=securityfs,
        lockdown=parse_lockdown(lockdown_text) if lockdown_text is not None else "unknown",
        lsm_list=lsm_list,
        checks=checks,
        plan=derive_plan(checks),
        elapsed_ms=(time.perf_counter() - start) * 1000,
    )
