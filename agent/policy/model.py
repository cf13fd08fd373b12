"""The policy language as objects that cannot be invalid.

A file holds one :class:`Policy`; a policy holds :class:`Rule` s; a rule guards one operation on
a :class:`Target` (what) for a :class:`Subject` (who). Constructors check every value and raise
:class:`~agent.errors.PolicyFieldError` naming the field; ``from_dict`` rejects unknown keys
(listing the allowed ones) and ``to_dict`` is its exact inverse: absent optional keys stay absent,
values are kept as written. Normalisation for matching (path bytes, IPv4-mapped addresses, port
blocks) happens in ``agent.policy.compile`` through the ``parse_*`` helpers defined here, so
validation and normalisation share one definition. The syntax is documented in policies/README.md.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.errors import PolicyFieldError, PolicyInvalid

FILE_OPERATIONS = ("exec", "open", "unlink", "rename", "chmod", "chown")
NET_OPERATIONS = ("connect", "bind", "listen", "accept")
OPERATIONS = FILE_OPERATIONS + NET_OPERATIONS
ACTIONS = ("allow", "audit", "deny", "kill")
FALLBACKS = ("kill", "audit")
MODES = ("enforce", "monitor")
ACCESS = ("read", "write", "create", "truncate")
PROTOCOLS = ("tcp", "udp")

#: Longest path or path prefix a rule may name, in bytes: the kernel key is one operation byte,
#: the path and a NUL in the 256 bytes a BPF LPM trie allows (see agent.policy.compile).
PATH_BYTES_MAX = 254
UID_MAX = 0xFFFFFFFE  # (uid_t)-1 means "no change" to the kernel, never a real id
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_NAME_RULE = (
    "1-64 characters: lowercase letters, digits, '.', '_', '-', starting with a letter or digit"
)

T = TypeVar("T")


# ---- value grammar (shared with the compiler) ----


def parse_path(text: str) -> tuple[bytes, bool]:
    """A path pattern -> (bytes to match, is_prefix).

    ``/etc/shadow`` matches that path exactly; ``/etc/sudoers.d/`` everything below the
    directory; ``/etc/sudoers*`` every path starting with ``/etc/sudoers`` (a trailing ``*`` is
    the only wildcard). Raises ValueError with what is allowed.
    """
    if not text.startswith("/"):
        raise ValueError(
            f"{text!r} is not absolute: paths start with '/' (the kernel matches resolved paths)"
        )
    body, star = (text[:-1], True) if text.endswith("*") else (text, False)
    if "*" in body or "?" in body or "[" in body:
        raise ValueError(
            f"{text!r}: the only wildcard is a trailing '*'; write '/dir/' for everything below a "
            "directory"
        )
    if "\0" in body:
        raise ValueError(f"{text!r} contains a NUL byte")
    parts = body.split("/")[1:-1] if body.endswith("/") else body.split("/")[1:]
    if body != "/" and any(part in ("", ".", "..") for part in parts):
        raise ValueError(
            f"{text!r} is not normalised: no '//', '.' or '..' components (the kernel "
            "resolves them before matching, so such a rule would never match)"
        )
    data = body.encode("utf-8", "surrogateescape")
    if len(data) > PATH_BYTES_MAX:
        raise ValueError(f"{text!r} is {len(data)} bytes: at most {PATH_BYTES_MAX} are allowed")
    return data, star or body.endswith("/")


def parse_address(text: str) -> tuple[bytes, int]:
    """An address or CIDR -> (16 address bytes, prefix length) in the IPv6 space.

    IPv4 is stored IPv4-mapped (``::ffff:a.b.c.d``), so a v4 rule also matches a v4-mapped v6
    socket address: one trie for both families, nothing to bypass by switching family.
    """
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not a valid address or CIDR ({exc}): write e.g. '10.0.0.0/8', "
            "'169.254.169.254' or 'fd00::/8'"
        ) from None
    if isinstance(net, ipaddress.IPv4Network):
        return b"\0" * 10 + b"\xff\xff" + net.network_address.packed, 96 + net.prefixlen
    return net.network_address.packed, net.prefixlen


def parse_port(value: int | str) -> tuple[int, int]:
    """``22`` or ``"1-1023"`` -> inclusive (low, high)."""
    allowed = 'ports are 0-65535: write 443 or a range "1-1023"'
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a port: {allowed}")
    if isinstance(value, int):
        low = high = value
    else:
        found = re.fullmatch(r"(\d+)-(\d+)", value.strip())
        if not found:
            raise ValueError(f"{value!r} is not a port or port range: {allowed}")
        low, high = int(found[1]), int(found[2])
        if low > high:
            raise ValueError(f"port range {value!r} is empty (low > high): {allowed}")
    for port in (low, high):
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is out of range: {allowed}")
    return low, high


# ---- checking helpers ----


@contextmanager
def within(*prefix: str | int) -> Iterator[None]:
    try:
        yield
    except PolicyFieldError as exc:
        raise exc.within(*prefix) from None


def _fail(field: str | int, message: str) -> PolicyFieldError:
    return PolicyFieldError((field,), message)


def _one_of(field: str, value: str, allowed: tuple[str, ...]) -> None:
    try:
        _choice(allowed)(value)
    except ValueError as exc:
        raise _fail(field, str(exc)) from None


def _items(field: str, values: tuple[T, ...] | None, check: Callable[[T], object]) -> None:
    """Every element valid, none twice, the list not empty."""
    if values is None:
        return
    if not values:
        raise _fail(field, f"{field} is empty: list at least one value")
    seen: list[T] = []
    for index, value in enumerate(values):
        try:
            check(value)
        except ValueError as exc:
            raise PolicyFieldError((field, index), str(exc)) from None
        if value in seen:
            raise PolicyFieldError((field, index), f"{value!r} is listed twice")
        seen.append(value)


def _choice(allowed: tuple[str, ...]) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value not in allowed:
            raise ValueError(f"{value!r} is not allowed: use one of {', '.join(allowed)}")

    return check


def _id_value(value: int) -> None:
    if isinstance(value, bool) or not 0 <= value <= UID_MAX:
        raise ValueError(f"{value!r} is not a uid/gid: use a number 0-{UID_MAX}")


def reject_unknown(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise PolicyFieldError(
                (key,),
                f"unknown key {key!r} in {where}: allowed keys are {', '.join(allowed)}",
                at_key=True,
            )


def optional(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _fail(key, f"{key} must be {what}, not {type(value).__name__} {value!r}")
    return value


def required(data: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    if key not in data:
        raise PolicyFieldError((key,), f"{key} is required ({what})", at_key=True)
    return optional(data, key, kind, what)


def optional_list(
    data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str
) -> Any:
    value = optional(data, key, list, f"a list of {what}")
    if value is None:
        return None
    for index, item in enumerate(value):
        if not isinstance(item, kind) or isinstance(item, bool):
            raise PolicyFieldError(
                (key, index), f"{key} holds {what}, not {type(item).__name__} {item!r}"
            )
    return tuple(value)


def optional_table(data: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    return optional(data, key, dict, "a table")  # type: ignore[no-any-return]


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        out[key] = list(value) if isinstance(value, tuple) else value


# ---- the language ----


@dataclass(frozen=True)
class Subject:
    """Who a rule applies to. Fields AND together, values in one list OR together.

    ``exe`` names the acting binary (exact path, ``/dir/`` or ``prefix*``); with
    ``descendants = true`` it also names every process started below such a process.
    ``except_`` (TOML key ``except``) is a subject of the same shape whose processes the rule
    leaves out. No field at all (only ``except``) means everyone.
    """

    exe: tuple[str, ...] | None = None
    descendants: bool | None = None
    uid: tuple[int, ...] | None = None
    gid: tuple[int, ...] | None = None
    cgroup: tuple[str, ...] | None = None
    except_: Subject | None = None

    KEYS = ("exe", "descendants", "uid", "gid", "cgroup", "except")

    def __post_init__(self) -> None:
        _items("exe", self.exe, parse_path)
        _items("uid", self.uid, _id_value)
        _items("gid", self.gid, _id_value)
        _items("cgroup", self.cgroup, parse_path)
        if self.descendants is not None and self.exe is None:
            raise _fail("descendants", "descendants applies to exe: name the exe it extends")
        if self.except_ is not None and self.except_.except_ is not None:
            raise PolicyFieldError(("except", "except"), "an except cannot hold another except")
        if not self.selects and self.except_ is None:
            raise PolicyFieldError(
                (),
                "empty: name exe, uid, gid or cgroup (a rule without subjects applies to "
                "everyone: leave the table out)",
                at_key=True,
            )

    @property
    def selects(self) -> bool:
        """True if some field narrows the subject (else it is everyone)."""
        return any(v is not None for v in (self.exe, self.uid, self.gid, self.cgroup))

    @property
    def inherits(self) -> bool:
        return bool(self.descendants)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, nested: bool = False) -> Subject:
        reject_unknown(
            data, cls.KEYS[:-1] if nested else cls.KEYS, "an except" if nested else "subjects"
        )
        exc = optional_table(data, "except")
        except_ = None
        if exc is not None:
            with within("except"):
                except_ = cls.from_dict(exc, nested=True)
        return cls(
            exe=optional_list(data, "exe", str, "paths"),
            descendants=optional(data, "descendants", bool, "true or false"),
            uid=optional_list(data, "uid", int, "numbers"),
            gid=optional_list(data, "gid", int, "numbers"),
            cgroup=optional_list(data, "cgroup", str, "cgroup paths"),
            except_=except_,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("exe", "descendants", "uid", "gid", "cgroup"):
            _put(out, key, getattr(self, key))
        if self.except_ is not None:
            out["except"] = self.except_.to_dict()
        return out


@dataclass(frozen=True)
class Target:
    """What a rule guards: ``paths`` for file operations and exec; ``addresses``, ``ports`` and
    ``protocol`` (ANDed; each omitted one matches anything) for network operations;
    ``fileless = true`` for exec only, instead of paths: every binary that has no name in any
    filesystem when it is executed (a memfd, a file unlinked while open, an O_TMPFILE)."""

    paths: tuple[str, ...] | None = None
    addresses: tuple[str, ...] | None = None
    ports: tuple[int | str, ...] | None = None
    protocol: str | None = None
    fileless: bool | None = None

    KEYS = ("paths", "addresses", "ports", "protocol", "fileless")
    NET_KEYS = ("addresses", "ports", "protocol")

    def __post_init__(self) -> None:
        _items("paths", self.paths, parse_path)
        _items("addresses", self.addresses, parse_address)
        _items("ports", self.ports, parse_port)
        if self.protocol is not None:
            _one_of("protocol", self.protocol, PROTOCOLS)
        if self.fileless is False:
            raise _fail("fileless", "fileless = false selects nothing: remove it")
        if self.fileless and self.paths is not None:
            raise PolicyFieldError(
                ("fileless",),
                "fileless names binaries that have no path: write it in a rule of its own, "
                "without paths",
                at_key=True,
            )
        if all(getattr(self, key) is None for key in self.KEYS):
            raise PolicyFieldError(
                (),
                "targets is empty: name paths (or fileless, for exec), or addresses/ports/protocol",
                at_key=True,
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Target:
        reject_unknown(data, cls.KEYS, "targets")
        return cls(
            paths=optional_list(data, "paths", str, "paths"),
            addresses=optional_list(data, "addresses", str, "addresses or CIDRs"),
            ports=optional_list(data, "ports", (int, str), 'ports (443) or ranges ("1-1023")'),
            protocol=optional(data, "protocol", str, f"one of {', '.join(PROTOCOLS)}"),
            fileless=optional(data, "fileless", bool, "true"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self.KEYS:
            _put(out, key, getattr(self, key))
        return out


@dataclass(frozen=True)
class Rule:
    id: str
    operation: str
    action: str
    targets: Target
    description: str | None = None
    access: tuple[str, ...] | None = None
    subjects: Subject | None = None
    fallback: str | None = None

    KEYS = ("id", "description", "operation", "access", "targets", "subjects", "action", "fallback")

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.id):
            raise _fail("id", f"rule id {self.id!r} is not allowed: {_NAME_RULE}")
        _one_of("operation", self.operation, OPERATIONS)
        _one_of("action", self.action, ACTIONS)
        if self.fallback is not None:
            _one_of("fallback", self.fallback, FALLBACKS)
            if self.action not in ("deny", "kill"):
                raise _fail(
                    "fallback",
                    f"fallback applies to deny and kill rules, not to {self.action!r}: remove it",
                )
        if self.access is not None:
            if self.operation != "open":
                raise _fail("access", "access applies to operation 'open' only: remove it")
            _items("access", self.access, _choice(ACCESS))
        file_op = self.operation in FILE_OPERATIONS
        if self.targets.fileless is not None and self.operation != "exec":
            raise PolicyFieldError(
                ("targets", "fileless"),
                f"targets.fileless applies to operation 'exec' only, not {self.operation!r}",
                at_key=True,
            )
        for key in ("paths", *Target.NET_KEYS):
            if getattr(self.targets, key) is not None and (key == "paths") != file_op:
                takes = "targets.paths" if file_op else "targets.addresses, ports, protocol"
                raise PolicyFieldError(
                    ("targets", key),
                    f"targets.{key} does not apply to operation {self.operation!r}: it takes "
                    f"{takes}",
                    at_key=True,
                )

    @property
    def access_set(self) -> tuple[str, ...]:
        """Open accesses guarded (all four when ``access`` is left out); empty for other ops."""
        if self.operation != "open":
            return ()
        return self.access if self.access is not None else ACCESS

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        reject_unknown(data, cls.KEYS, "a rule")
        targets = optional_table(data, "targets")
        if targets is None:
            raise PolicyFieldError(("targets",), "targets is required (a table)", at_key=True)
        with within("targets"):
            target = Target.from_dict(targets)
        subjects = optional_table(data, "subjects")
        subject = None
        if subjects is not None:
            with within("subjects"):
                subject = Subject.from_dict(subjects)
        return cls(
            id=required(data, "id", str, "a stable name"),
            operation=required(data, "operation", str, f"one of {', '.join(OPERATIONS)}"),
            action=required(data, "action", str, f"one of {', '.join(ACTIONS)}"),
            targets=target,
            description=optional(data, "description", str, "text"),
            access=optional_list(data, "access", str, f"accesses ({', '.join(ACCESS)})"),
            subjects=subject,
            fallback=optional(data, "fallback", str, f"one of {', '.join(FALLBACKS)}"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self.KEYS:
            value = getattr(self, key)
            _put(out, key, value.to_dict() if isinstance(value, Target | Subject) else value)
        return out


@dataclass(frozen=True)
class Policy:
    name: str
    mode: str
    rules: tuple[Rule, ...]
    description: str | None = None

    KEYS = ("name", "description", "mode", "rules")

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise _fail("name", f"policy name {self.name!r} is not allowed: {_NAME_RULE}")
        _one_of("mode", self.mode, MODES)
        if not self.rules:
            raise _fail("rules", "a policy needs at least one [[rules]] table")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Every error in the document at once, as PolicyInvalid(list of PolicyFieldError)."""
        errors: list[PolicyFieldError] = []
        rules: list[Rule] = []
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
            errors.append(_fail("rules", "rules must be written as [[rules]] tables"))
            raw_rules = []
        for index, raw in enumerate(raw_rules):
            try:
                with within("rules", index):
                    rules.append(Rule.from_dict(raw))
            except PolicyFieldError as exc:
                errors.append(exc)
        try:
            reject_unknown(data, cls.KEYS, "a policy file")
            policy = cls(
                name=required(data, "name", str, "the policy's name"),
                mode=required(data, "mode", str, f"one of {', '.join(MODES)}"),
                rules=tuple(rules),
                description=optional(data, "description", str, "text"),
            )
        except PolicyFieldError as exc:
            if not (errors and exc.field == ("rules",)):  # no rules left because all were bad
                errors.append(exc)
        if errors:
            raise PolicyInvalid(list(errors))
        return policy

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        _put(out, "description", self.description)
        out["mode"] = self.mode
        out["rules"] = [rule.to_dict() for rule in self.rules]
        return out
