"""The log's side of tlog-witness: ask every witness of a policy to cosign a checkpoint, and
keep only cosignatures that verify with the policy's keys.

Each witness gets ``old N`` = the size it last cosigned as far as this client knows (0 at
first); a 409 names the witness's size, and the request is made again from there at once (the
answer is the witness's word of what it holds, not a reason to give up). An answer that is not
a cosignature by that witness's key over this checkpoint counts as no answer (a lying or broken
witness), and the quorum is judged on verified cosignatures only. The call returns as soon as
the quorum is met or cannot be met any more; a slower witness's request goes on in the
background so that its view keeps up, one request per witness at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from agent.c2sp.checkpoint import Checkpoint, parse_decimal
from agent.c2sp.keys import NoteError
from agent.c2sp.note import Note, Signature, parse_signatures
from agent.c2sp.policy import Policy, Witness
from agent.witness.protocol import ADD_CHECKPOINT, SIZE_TYPE, AddCheckpoint

log = logging.getLogger(__name__)

#: 409s followed within one request at most (each names a new size).
MAX_CONFLICT_RETRIES = 2


@dataclass
class Outcome:
    cosignatures: dict[str, Signature] = field(default_factory=dict)
    #: Per witness that did not cosign: why (status, timeout, bad cosignature, ...).
    failures: dict[str, str] = field(default_factory=dict)


class Cosigners:
    def __init__(
        self, policy: Policy, session: aiohttp.ClientSession, *, timeout: float = 5.0
    ) -> None:
        self.policy = policy
        self.session = session
        self.timeout = timeout
        self.known: dict[str, int] = {}
        self._busy: dict[str, asyncio.Task[Signature | str]] = {}

    async def cosign(
        self, note: Note, checkpoint: Checkpoint, proof: Callable[[int], Sequence[bytes]]
    ) -> Outcome:
        """Cosignatures of ``note`` (the log-signed checkpoint); ``proof(old)`` gives the
        consistency proof from size ``old`` to the checkpoint's size."""
        out = Outcome()
        tasks: dict[asyncio.Task[Signature | str], str] = {}
        for name, witness in self.policy.witnesses.items():
            if witness.url is None:
                out.failures[name] = "no URL in the policy"
                continue
            if name in self._busy and not self._busy[name].done():
                out.failures[name] = "still busy with an earlier checkpoint"
                continue
            task = asyncio.ensure_future(self._timed(self._ask(witness, note, checkpoint, proof)))
            self._busy[name] = task
            tasks[task] = name
        pending = set(tasks)
        while pending and not self.policy.satisfied(out.cosignatures):
            if not self._reachable(out, {tasks[t] for t in pending}):
                break
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                name, result = tasks[task], task.result()
                if isinstance(result, Signature):
                    out.cosignatures[name] = result
                else:
                    out.failures[name] = result
        for task in pending:
            out.failures[tasks[task]] = "no answer yet (left to finish in the background)"
        return out

    def _reachable(self, out: Outcome, pending: set[str]) -> bool:
        return self.policy.satisfied(set(out.cosignatures) | pending)

    async def _timed(self, asking: Awaitable[Signature | str]) -> Signature | str:
        try:
            async with asyncio.timeout(self.timeout):
                return await asking
        except TimeoutError:
            return f"no answer in {self.timeout:g} s"
        except aiohttp.ClientError as exc:
            return f"unreachable: {exc}"

    async def _ask(
        self,
        witness: Witness,
        note: Note,
        checkpoint: Checkpoint,
        proof: Callable[[int], Sequence[bytes]],
    ) -> Signature | str:
        assert witness.url is not None
        url = witness.url.rstrip("/") + ADD_CHECKPOINT
        for _ in range(MAX_CONFLICT_RETRIES + 1):
            old = self.known.get(witness.name, 0)
            if old > checkpoint.size:
                return f"it cosigned size {old}, larger than this checkpoint's {checkpoint.size}"
            # off the event loop: a proof costs O(n) hashes (agent.collector.fleet.FleetTree)
            path = await asyncio.get_running_loop().run_in_executor(None, proof, old) if old else ()
            body = AddCheckpoint(old, tuple(path), note).to_bytes()
            async with self.session.post(url, data=body) as resp:
                payload = await resp.read()
                if resp.status == 409 and resp.content_type == SIZE_TYPE:
                    try:
                        size = parse_decimal(payload.decode("ascii").removesuffix("\n"), "size")
                    except (NoteError, UnicodeDecodeError):
                        return "a 409 without a size"
                    if size == old:
                        return f"409 for the size it names ({size})"
                    self.known[witness.name] = size
                    continue
                if resp.status != 200:
                    text = payload.decode("utf-8", "replace").strip()[:200]
                    return f"HTTP {resp.status}: {text}"
            return self._check(witness, note, checkpoint, payload)
        return "too many 409 answers"

    def _check(
        self, witness: Witness, note: Note, checkpoint: Checkpoint, payload: bytes
    ) -> Signature | str:
        try:
            mine = [s for s in parse_signatures(payload) if s.name == witness.key.name]
            mine = [s for s in mine if s.key_id == witness.key.key_id]
            if not mine:
                return "its answer holds no cosignature by its key"
            Note(note.text, (mine[0],)).open([witness.key])
        except NoteError as exc:
            log.warning("witness %s answered a bad cosignature: %s", witness.name, exc)
            return f"bad cosignature: {exc}"
        self.known[witness.name] = checkpoint.size
        return mine[0]
