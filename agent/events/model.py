"""What happened on the host: one frozen dataclass per event kind.

Events are built by ``agent.events.decode`` from ring-buffer records and are the one type the
rest of the agent consumes (watch, policy, journal). ``to_dict`` is the stable JSON form used
by ``sealtrail watch --json`` and by journal records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

# Where a path came from (documented in README "Event fields"):
PATH_KERNEL = "kernel"  # built from the kernel's dentries: absolute, symlinks and .. resolved
PATH_ARG_CWD = "arg+cwd"  # relative path as passed, joined (lexically) to the kernel's cwd/dirfd
PATH_ARG = "arg"  # absolute path as passed to the syscall, not resolved
#: ``auid``/``ses`` of a task no login set (the kernel's AUDIT_UID_UNSET, ``(u32)-1``)
AUID_UNSET = 0xFFFFFFFF


@dataclass(frozen=True, kw_only=True)
class Event:
    kind: ClassVar[str] = "event"

    ts_ns: int  # wall clock, ns since the epoch
    pid: int
    tid: int
    ppid: int
    uid: int
    gid: int
    cgroup_id: int
    comm: str
    exe: str | None = None  # acting binary (from the exec we saw, or /proc via psutil)
    truncated: bool = False  # some string hit its documented limit
    # who: the audit login uid (task->loginuid, auditd's auid: the user who logged in, kept
    # through sudo and su) and audit session id of the acting task, as the kernel held them;
    # AUID_UNSET where no login set them; None where the event did not come from the probes
    auid: int | None = None
    ses: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        # a frozen dataclass's __dict__ holds exactly its fields (no attribute can be added)
        for name, value in self.__dict__.items():
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def object_text(self) -> str:
        """The thing acted upon, for one-line human output."""
        return ""


@dataclass(frozen=True, kw_only=True)
class ExecEvent(Event):
    kind: ClassVar[str] = "exec"
    filename: str  # as passed to execve
    argv: tuple[str, ...]
    argc: int
    cwd: str
    # no name in any filesystem (a memfd: exe is "memfd:NAME"; a deleted file: the path it had)
    fileless: bool = False
    loader_target: str | None = None  # exe is the dynamic loader: the binary it will load

    def object_text(self) -> str:
        args = " ".join(self.argv)
        what = f"{self.exe} [{args}]" + (" …" if self.truncated else "")
        if self.fileless:
            what += " (fileless)"
        if self.loader_target is not None:
            what += f" (loads {self.loader_target})"
        return what


@dataclass(frozen=True, kw_only=True)
class ForkEvent(Event):
    kind: ClassVar[str] = "fork"
    child_pid: int

    def object_text(self) -> str:
        return f"child {self.child_pid}"


@dataclass(frozen=True, kw_only=True)
class ExitEvent(Event):
    kind: ClassVar[str] = "exit"
    exit_code: int | None  # set when the process exited normally
    signal: int | None  # set when a signal ended it
    core_dumped: bool
    duration_ns: int

    def object_text(self) -> str:
        if self.signal is not None:
            return f"killed by signal {self.signal}" + (
                " (core dumped)" if self.core_dumped else ""
            )
        return f"exit {self.exit_code}"


@dataclass(frozen=True, kw_only=True)
class FileEvent(Event):
    path: str
    path_source: str  # PATH_KERNEL | PATH_ARG_CWD | PATH_ARG
    result: int  # syscall return: >= 0 success, -errno on failure

    def object_text(self) -> str:
        return f"{self.path}{_result(self.result)}"


@dataclass(frozen=True, kw_only=True)
class OpenEvent(FileEvent):
    kind: ClassVar[str] = "open"
    flags: int
    mode: int
    access: tuple[str, ...]  # subset of read, write, create, truncate

    def object_text(self) -> str:
        return f"{self.path} [{','.join(self.access)}]{_result(self.result)}"


@dataclass(frozen=True, kw_only=True)
class UnlinkEvent(FileEvent):
    kind: ClassVar[str] = "unlink"


@dataclass(frozen=True, kw_only=True)
class RenameEvent(FileEvent):
    kind: ClassVar[str] = "rename"
    new_path: str
    new_path_source: str
    flags: int

    def object_text(self) -> str:
        return f"{self.path} -> {self.new_path}{_result(self.result)}"


@dataclass(frozen=True, kw_only=True)
class ChmodEvent(FileEvent):
    kind: ClassVar[str] = "chmod"
    mode: int

    def object_text(self) -> str:
        return f"{self.path} mode {self.mode:04o}{_result(self.result)}"


@dataclass(frozen=True, kw_only=True)
class ChownEvent(FileEvent):
    kind: ClassVar[str] = "chown"
    owner_uid: int | None  # None: unchanged (-1 passed)
    owner_gid: int | None

    def object_text(self) -> str:
        u = "-" if self.owner_uid is None else str(self.owner_uid)
        g = "-" if self.owner_gid is None else str(self.owner_gid)
        return f"{self.path} owner {u}:{g}{_result(self.result)}"


@dataclass(frozen=True, kw_only=True)
class TruncateEvent(FileEvent):
    """truncate(2) (path as passed) or ftruncate(2) (the fd's file, as the kernel resolved it).
    Judged by ``open`` rules whose access includes ``truncate``."""

    kind: ClassVar[str] = "truncate"
    length: int  # the size asked for

    def object_text(self) -> str:
        return f"{self.path} to {self.length} bytes{_result(self.result)}"


@dataclass(frozen=True, kw_only=True)
class NetEvent(Event):
    family: str  # "ipv4" | "ipv6"
    protocol: str  # "tcp", "udp", ... or the number
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    result: int

    def object_text(self) -> str:
        return (
            f"{self.protocol} {_hostport(self.local_addr, self.local_port)} -> "
            f"{_hostport(self.remote_addr, self.remote_port)}{_result(self.result)}"
        )


@dataclass(frozen=True, kw_only=True)
class ConnectEvent(NetEvent):
    kind: ClassVar[str] = "connect"


@dataclass(frozen=True, kw_only=True)
class BindEvent(NetEvent):
    kind: ClassVar[str] = "bind"

    def object_text(self) -> str:
        return (
            f"{self.protocol} {_hostport(self.local_addr, self.local_port)}{_result(self.result)}"
        )


@dataclass(frozen=True, kw_only=True)
class ListenEvent(NetEvent):
    kind: ClassVar[str] = "listen"
    backlog: int

    def object_text(self) -> str:
        return (
            f"{self.protocol} {_hostport(self.local_addr, self.local_port)}{_result(self.result)}"
        )


@dataclass(frozen=True, kw_only=True)
class AcceptEvent(NetEvent):
    kind: ClassVar[str] = "accept"

    def object_text(self) -> str:
        return (
            f"{self.protocol} {_hostport(self.local_addr, self.local_port)} <- "
            f"{_hostport(self.remote_addr, self.remote_port)}{_result(self.result)}"
        )


@dataclass(frozen=True, kw_only=True)
class GuardEvent(Event):
    """A decision the in-kernel guard took (deny, kill, audit, or "would" in monitor mode).

    ``rule_index`` is resolved to a rule id by the compiled policy of ``generation``.
    """

    kind: ClassVar[str] = "guard"
    op: str  # the event kind judged: connect, bind, ...
    action: str  # taken: allow, audit, deny, kill
    rule_action: str  # asked by the rule (differs from action in monitor mode)
    mechanism: str
    generation: int
    rule_index: int
    family: str  # network ops ("" for file ops)
    protocol: str
    addr: str
    port: int
    path: str | None = None  # file ops and exec: the object, as the kernel resolved it
    call: str = ""  # the call judged when it is not ``op`` itself: "sendmsg", "truncate",
    # "autobind" (a bind to port 0, judged on the port the kernel picked)

    def object_text(self) -> str:
        what = self.path or f"{self.protocol} {_hostport(self.addr, self.port)}"
        return f"{self.action.upper()} {self.op} {what} (rule #{self.rule_index}, {self.mechanism})"


@dataclass(frozen=True, kw_only=True)
class LossEvent:
    """Records the kernel could not deliver (ring buffer full). Never silent."""

    kind: ClassVar[str] = "loss"
    ts_ns: int  # when the loss was noticed (wall clock)
    since_ns: int  # losses counted since this time (the previous report, or start)
    count: int
    by_kind: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ts_ns": self.ts_ns,
            "since_ns": self.since_ns,
            "count": self.count,
            "by_kind": dict(self.by_kind),
        }


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        ExecEvent,
        ForkEvent,
        ExitEvent,
        OpenEvent,
        UnlinkEvent,
        RenameEvent,
        ChmodEvent,
        ChownEvent,
        TruncateEvent,
        ConnectEvent,
        BindEvent,
        ListenEvent,
        AcceptEvent,
    )
}
KINDS = tuple(EVENT_TYPES)
#: Kinds whose object is a path (file operations; exec's object is its binary).
FILE_KINDS = frozenset(k for k, cls in EVENT_TYPES.items() if issubclass(cls, FileEvent))


def _result(ret: int) -> str:
    if ret < 0:
        import errno

        return f" = {errno.errorcode.get(-ret, str(-ret))}"
    return ""


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def escape_undecodable(fields: dict[str, Any]) -> bool:
    """Make the strings of an event's fields valid Unicode, in place; True if any changed.

    Paths and argv are bytes in the kernel, decoded with surrogateescape so that policy
    matching sees the exact bytes. Bytes that are not UTF-8 cannot be JSON text: each becomes
    the four characters ``\\xNN`` and the fields get ``"escaped": true``.
    """
    if _escape_in(fields):
        fields["escaped"] = True
        return True
    return False


def _escape_in(value: dict[str, Any] | list[Any]) -> bool:
    """Escape in place inside objects and lists (verdicts nest the object acted on)."""
    escaped = False
    items = value.items() if type(value) is dict else enumerate(value)
    for key, item in list(items):
        kind = type(item)
        if kind is str:
            if not item.isascii() and _undecodable(item):
                value[key] = _escape(item)  # type: ignore[index,call-overload]
                escaped = True
        elif kind is dict or kind is list:
            escaped = _escape_in(item) or escaped
    return escaped


def _undecodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _escape(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
