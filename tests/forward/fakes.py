"""An in-memory collector speaking protocol v1 to the forwarder, for the forwarder's logic.

It keeps the lines it accepted, answers as ``agent.collector.server`` does (200 with a signed
receipt, 409 gap, 422 rejection) and can be told to fail in the ways the forwarder must
survive. The real server is exercised end to end in ``test_end_to_end``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.collector.protocol import Receipt
from agent.errors import ForwardError
from agent.forward.client import Answer
from agent.journal.keys import SigningKey
from agent.journal.merkle import CompactTree
from agent.journal.record import RECORD_PREFIX


@dataclass
class FakeCollector:
    host: str
    key: SigningKey = field(default_factory=SigningKey.generate)
    lines: list[bytes] = field(default_factory=list)
    #: Each request pops the next scripted answer (an Answer, or an exception to raise).
    script: list[Answer | Exception] = field(default_factory=list)
    #: Called with (start, body) before an ingest is judged: may return an answer instead.
    hook: Callable[[int, bytes], Answer | None] | None = None
    signed_host: str | None = None
    requests: list[tuple[str, int | None, int]] = field(default_factory=list)
    aborted: int = 0

    def _receipt(self, size: int) -> dict[str, object]:
        tree = CompactTree()  # the true root of what it holds (the forwarder checks it)
        for line in self.lines[:size]:
            tree.append(hashlib.sha256(RECORD_PREFIX + line).digest())
        root = tree.root()
        host = self.signed_host or self.host
        return Receipt.sign(self.key, "coll", host, size, root, None).to_dict()

    def _scripted(self) -> Answer | None:
        if not self.script:
            return None
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def head(self) -> Answer:
        self.requests.append(("head", None, 0))
        scripted = self._scripted()
        if scripted is not None:
            return scripted
        size = len(self.lines)
        last = hashlib.sha256(RECORD_PREFIX + self.lines[-1]).hexdigest() if self.lines else None
        body = {"host": self.host, "size": size, "last_hash": last, "receipt": self._receipt(size)}
        return Answer(200, body, None)

    def ingest(self, start: int, body: bytes | memoryview) -> Answer:
        body = bytes(body)  # the forwarder's view is valid only until its next read
        lines = body.splitlines()
        self.requests.append(("ingest", start, len(lines)))
        scripted = self._scripted()
        if scripted is not None:
            return scripted
        if self.hook is not None:
            hooked = self.hook(start, body)
            if hooked is not None:
                return hooked
        size = len(self.lines)
        if start > size:
            return Answer(409, {"error": "gap", "size": size, "detail": "gap"}, None)
        for i, line in enumerate(lines):
            seq = start + i
            if seq < size:
                if self.lines[seq] != line:
                    return Answer(422, {"error": "fork", "detail": "fork", "seq": seq}, None)
            else:
                self.lines.append(line)
        size = len(self.lines)
        return Answer(
            200, {"accepted": len(lines), "size": size, "receipt": self._receipt(size)}, None
        )

    def close(self) -> None:
        pass

    def abort(self) -> None:
        self.aborted += 1


def down(message: str = "connection refused") -> ForwardError:
    return ForwardError(f"https://127.0.0.1:1: {message}")
