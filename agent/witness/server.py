"""``sealtrail witness serve``: the tlog-witness HTTP server (aiohttp, like the collector).

Each add-checkpoint is judged and persisted with no ``await`` between reading the state and
committing the new one, so on the one event loop the check and the update are atomic (the race
of tlog-witness, "add-checkpoint", cannot happen); the commit and the high-water line are on
disk before the answer is sent. Plain HTTP: the protocol authenticates the log by its signature,
not the connection; put TLS in front where the network is not trusted (docs/witness.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from agent.c2sp.checkpoint import Checkpoint
from agent.c2sp.keys import NoteError, Signer
from agent.c2sp.note import Note, Signature
from agent.errors import FormatError
from agent.journal import merkle
from agent.witness.config import WitnessConfig
from agent.witness.protocol import ADD_CHECKPOINT, MAX_BODY, SIZE_TYPE, AddCheckpoint
from agent.witness.state import WitnessState, origin_hash

log = logging.getLogger(__name__)


@dataclass
class Witness:
    """The judging half, without HTTP: ``add`` returns (status, body, content type)."""

    config: WitnessConfig
    signer: Signer
    state: WitnessState
    clock: Callable[[], float] = time.time

    def add(self, body: bytes) -> tuple[int, bytes, str]:
        try:
            request = AddCheckpoint.parse(body)
            checkpoint = Checkpoint.parse(request.note.text)
        except NoteError as exc:
            return _text(400, f"malformed request: {exc}")
        key = self.config.logs.get(checkpoint.origin)
        if key is None:
            return _text(404, f"unknown log origin {checkpoint.origin!r}")
        try:
            verified = request.note.open([key])
        except NoteError as exc:
            return _text(403, f"log signature: {exc}")
        if request.old > checkpoint.size:
            return _text(400, f"old size {request.old} is larger than the checkpoint's")
        latest = self.state.latest(checkpoint.origin)
        known = 0 if latest is None else latest.size
        if request.old != known:
            return 409, f"{known}\n".encode("ascii"), SIZE_TYPE
        problem = self._inconsistency(request, checkpoint, latest.root if latest else None)
        # a log-signed note with the signatures checked, for the monitoring GET and as evidence
        signed = Note(request.note.text, tuple(v.signature for v in verified))
        now = self.clock()
        if problem is not None:
            if latest is not None:
                self.state.conflict(
                    checkpoint.origin, problem, signed.to_bytes(), latest.note, int(now * 1e9)
                )
                log.warning("log %s: kept a conflicting checkpoint: %s", checkpoint.origin, problem)
            return _text(422, problem)
        cosignature = Signature(
            self.signer.name, self.signer.key_id, self.signer.sign(checkpoint.text(), int(now))
        )
        note = signed.with_signatures([cosignature]).to_bytes()
        if not self.state.advance(
            checkpoint.origin, known, checkpoint.size, checkpoint.root, note, int(now * 1e9)
        ):  # only another process on the same state gets here
            latest = self.state.latest(checkpoint.origin)
            return 409, f"{0 if latest is None else latest.size}\n".encode("ascii"), SIZE_TYPE
        return 200, cosignature.line().encode("utf-8"), "text/plain; charset=utf-8"

    @staticmethod
    def _inconsistency(
        request: AddCheckpoint, checkpoint: Checkpoint, old_root: bytes | None
    ) -> str | None:
        if checkpoint.size == 0 and checkpoint.root != merkle.EMPTY_ROOT:
            return "a checkpoint of size 0 must have the empty tree's root"
        if request.old == 0:
            return "the consistency proof from size 0 must be empty" if request.proof else None
        assert old_root is not None  # old == the cosigned size > 0
        try:
            merkle.verify_consistency(
                request.old, checkpoint.size, old_root, checkpoint.root, request.proof
            )
        except FormatError as exc:
            if request.old == checkpoint.size and old_root != checkpoint.root:
                return f"size {checkpoint.size} was cosigned with another root hash"
            return f"the consistency proof from size {request.old} does not verify: {exc}"
        return None

    def checkpoint(self, hashed_origin: str) -> bytes | None:
        for origin in self.config.logs:
            if origin_hash(origin) == hashed_origin:
                latest = self.state.latest(origin)
                return None if latest is None else latest.note
        return None


def _text(status: int, message: str) -> tuple[int, bytes, str]:
    return status, (message + "\n").encode("utf-8"), "text/plain; charset=utf-8"


_WITNESS: web.AppKey[Witness] = web.AppKey("witness", Witness)


async def handle_add(request: web.Request) -> web.StreamResponse:
    if request.content_length is not None and request.content_length > MAX_BODY:
        return web.Response(status=413, text=f"a request is at most {MAX_BODY} bytes\n")
    body = await request.read()
    status, payload, content_type = request.app[_WITNESS].add(body)
    return web.Response(status=status, body=payload, headers={"Content-Type": content_type})


async def handle_checkpoint(request: web.Request) -> web.StreamResponse:
    note = request.app[_WITNESS].checkpoint(request.match_info["origin"])
    if note is None:
        return web.Response(status=404, text="no checkpoint of that log was cosigned here\n")
    return web.Response(body=note, headers={"Content-Type": "text/plain; charset=utf-8"})


def build_app(witness: Witness) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[_WITNESS] = witness
    app.router.add_post(ADD_CHECKPOINT, handle_add)
    app.router.add_get("/{origin:[0-9a-f]{64}}/checkpoint", handle_checkpoint)
    return app


async def serve(
    config: WitnessConfig,
    *,
    ready: Callable[[tuple[str, int]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``); ``ready`` gets the bound address."""
    signer = config.signer()
    state = WitnessState(config.path(config.state), config.path(config.highwater))
    runner = web.AppRunner(build_app(Witness(config, signer, state)), handle_signals=False)
    try:
        await runner.setup()
        host, port = config.listen_address()
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        await site.start()
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        server = site._server
        assert isinstance(server, asyncio.Server)
        bound = server.sockets[0].getsockname()[:2]
        log.info("witness %s listening on %s:%s", config.name, bound[0], bound[1])
        if ready is not None:
            ready((str(bound[0]), int(bound[1])))
        await stop.wait()
    finally:
        await runner.cleanup()
        state.close()
