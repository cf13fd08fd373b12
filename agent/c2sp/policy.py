"""Trust policies (c2sp.org/tlog-policy): the logs, the witnesses and the quorum.

::

    log <vkey> [<url>]
    witness <name> <vkey> [<url>]
    group <name> all|any|<k> <member>...
    quorum <name>|none

A group or the quorum names only witnesses and groups defined on earlier lines; each member is
listed once per group; exactly one quorum line. Witness vkeys are cosignature/v1 keys (type
0x04), log vkeys Ed25519 note keys (type 0x01). Errors name the line.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from agent.c2sp.keys import COSIGNATURE_V1, ED25519, NoteError, VerifierKey
from agent.c2sp.note import Note, Verified

NONE = "none"


@dataclass(frozen=True)
class Witness:
    name: str
    key: VerifierKey
    url: str | None


@dataclass(frozen=True)
class Group:
    name: str
    threshold: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    logs: tuple[VerifierKey, ...]
    witnesses: dict[str, Witness]
    groups: dict[str, Group]
    quorum: str
    log_urls: dict[str, str] = field(default_factory=dict)

    def satisfied(self, cosigned: Collection[str], name: str | None = None) -> bool:
        """Whether witnesses ``cosigned`` (policy names) meet the quorum (or group ``name``)."""
        name = self.quorum if name is None else name
        if name == NONE:
            return True
        if name in self.witnesses:
            return name in cosigned
        group = self.groups[name]
        return sum(self.satisfied(cosigned, m) for m in group.members) >= group.threshold

    def witness_keys(self) -> list[VerifierKey]:
        return [w.key for w in self.witnesses.values()]

    def cosigners(self, verified: Sequence[Verified]) -> set[str]:
        """The policy names of the witnesses among ``verified`` signatures."""
        by_key = {(w.key.name, w.key.key_id): n for n, w in self.witnesses.items()}
        out = set()
        for v in verified:
            name = by_key.get((v.key.name, v.key.key_id))
            if name is not None and v.key.sig_type == COSIGNATURE_V1:
                out.add(name)
        return out

    def verify_checkpoint(self, note: Note, origin: str) -> tuple[set[str], list[Verified]]:
        """Check ``note`` is signed by a policy log named ``origin`` and cosigned by a quorum;
        every signature by a policy key must verify. Returns the cosigning witnesses."""
        logs = [k for k in self.logs if k.name == origin]
        if not logs:
            raise NoteError(f"the policy lists no log named {origin!r}")
        verified = note.open([*logs, *self.witness_keys()])
        if not any(v.key.sig_type == ED25519 for v in verified):
            raise NoteError(f"the checkpoint is not signed by the log {origin}")
        cosigned = self.cosigners(verified)
        if not self.satisfied(cosigned):
            have = ", ".join(sorted(cosigned)) or "no witness"
            raise NoteError(f"the checkpoint's cosignatures ({have}) do not meet the quorum")
        return cosigned, verified

    @classmethod
    def parse(cls, text: str, where: str = "policy") -> Policy:
        logs: list[VerifierKey] = []
        log_urls: dict[str, str] = {}
        witnesses: dict[str, Witness] = {}
        groups: dict[str, Group] = {}
        quorum: str | None = None
        publics: set[bytes] = set()
        for number, raw in enumerate(text.split("\n"), 1):
            at = f"{where}: line {number}"
            if any(c != "\t" and (ord(c) < 0x20 or ord(c) == 0x7F) for c in raw):
                raise NoteError(f"{at}: control character (only tab and newline are allowed)")
            words = raw.replace("\t", " ").split()
            if not words or words[0].startswith("#"):
                continue
            kind, args = words[0], words[1:]
            try:
                if kind == "log":
                    key = _key(args, 1, ED25519, "log")
                    _unique(key.public, publics, "log key")
                    logs.append(key)
                    if len(args) == 2:
                        log_urls[key.name] = args[1]
                elif kind == "witness":
                    if len(args) not in (2, 3):
                        raise NoteError("is not 'witness NAME VKEY [URL]'")
                    name = _new_name(args[0], witnesses, groups)
                    key = _key(args, 2, COSIGNATURE_V1, "witness")
                    _unique(key.public, publics, "witness key")
                    witnesses[name] = Witness(name, key, args[2] if len(args) == 3 else None)
                elif kind == "group":
                    groups[args[0] if args else ""] = _group(args, witnesses, groups)
                elif kind == "quorum":
                    if quorum is not None:
                        raise NoteError("a second quorum line")
                    if len(args) != 1:
                        raise NoteError("is not 'quorum NAME'")
                    if args[0] != NONE and args[0] not in witnesses and args[0] not in groups:
                        raise NoteError(f"quorum names {args[0]!r}, defined on no earlier line")
                    quorum = args[0]
                else:
                    raise NoteError(f"unknown keyword {kind!r} (log, witness, group, quorum)")
            except NoteError as exc:
                raise NoteError(f"{at}: {kind} {exc}") from None
        if quorum is None:
            raise NoteError(f"{where}: no quorum line (write 'quorum none' to need no witness)")
        return cls(tuple(logs), witnesses, groups, quorum, log_urls)


def _key(args: list[str], index: int, sig_type: int, what: str) -> VerifierKey:
    if len(args) < index or len(args) > index + 1:
        raise NoteError("has the wrong number of fields")
    key = VerifierKey.from_text(args[index - 1])
    if key.sig_type != sig_type:
        raise NoteError(
            f"key {key.name} has signature type 0x{key.sig_type:02x}, a {what} "
            f"key has 0x{sig_type:02x}"
        )
    return key


def _unique(public: bytes, seen: set[bytes], what: str) -> None:
    if public in seen:
        raise NoteError(f"repeats a {what} listed before (duplicates are not allowed)")
    seen.add(public)


def _new_name(name: str, witnesses: dict[str, Witness], groups: dict[str, Group]) -> str:
    if name == NONE or name in witnesses or name in groups:
        raise NoteError(f"name {name!r} is taken")
    return name


def _group(args: list[str], witnesses: dict[str, Witness], groups: dict[str, Group]) -> Group:
    if len(args) < 3:
        raise NoteError("is not 'group NAME all|any|K MEMBER...'")
    name = _new_name(args[0], witnesses, groups)
    members = tuple(args[2:])
    if len(set(members)) != len(members):
        raise NoteError("lists a member twice")
    for m in members:
        if m not in witnesses and m not in groups:
            raise NoteError(f"member {m!r} is defined on no earlier line")
    spec = args[1]
    if spec == "all":
        k = len(members)
    elif spec == "any":
        k = 1
    elif spec.isascii() and spec.isdigit() and not spec.startswith("0"):
        k = int(spec)
        if not 1 <= k <= len(members):
            raise NoteError(f"threshold {k} is not between 1 and {len(members)}")
    else:
        raise NoteError(f"threshold {spec!r} is not all, any or a number")
    return Group(name, k, members)
