"""``sealtrail witness serve``: the tlog-witness HTTP server (aiohttp, like the collector).

Each add-checkpoint is judged against the witness's view and changes it in one step on the one
event loop, so the check and the update are atomic (the race of tlog-witness, "add-checkpoint",
cannot happen); the update is then written with the others judged meanwhile (``GroupCommit``:
one SQLite transaction and one fdatasync of the high-water file per group), and the answer is
sent only once its group is on disk. Plain HTTP: the protocol authenticates the log by its
signature, not the connection; put TLS in front where the network is not trusted
(docs/witness.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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
from agent.witness.errors import WitnessError
from agent.witness.protocol import ADD_CHECKPOINT, MAX_BODY, SIZE_TYPE, AddCheckpoint
from agent.witness.state import Update, WitnessState, origin_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    #: A cosignature is sent only once this update is on disk.
    update: Update | None = None


class Witness:
    """The judging half, without HTTP. ``add`` judges against ``view``, the latest checkpoint
    of each log as cosigned, including cosignatures whose group is still being written: the
    check and the change of the view happen in one call, with nothing in between, so no two
    requests are ever judged against the same view (the race of tlog-witness cannot happen)."""

    def __init__(
        self,
        config: WitnessConfig,
        signer: Signer,
        state: WitnessState,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.signer = signer
        self.state = state
        self.clock = clock
        self.view = {c.origin: (c.size, c.root, c.note) for c in state.logs()}
        #: Set when a group could not be written: the view is ahead of the disk, so the
        #: witness answers 503 until it is restarted from what is on disk.
        self.broken: str | None = None

    def add(self, body: bytes) -> Answer:
        if self.broken is not None:
            return _text(503, f"the witness cannot record cosignatures: {self.broken}")
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
        latest = self.view.get(checkpoint.origin)
        known = 0 if latest is None else latest[0]
        if request.old != known:
            return Answer(409, f"{known}\n".encode("ascii"), SIZE_TYPE)
        problem = self._inconsistency(request, checkpoint, latest[1] if latest else None)
        # a log-signed note with the signatures checked, for the monitoring GET and as evidence
        signed = Note(request.note.text, tuple(v.signature for v in verified))
        now = self.clock()
        if problem is not None:
            if latest is not None:
                self.state.conflict(
                    checkpoint.origin, problem, signed.to_bytes(), latest[2], int(now * 1e9)
                )
                log.warning("log %s: kept a conflicting checkpoint: %s", checkpoint.origin, problem)
            return _text(422, problem)
        cosignature = Signature(
            self.signer.name, self.signer.key_id, self.signer.sign(checkpoint.text(), int(now))
        )
        note = signed.with_signatures([cosignature]).to_bytes()
        self.view[checkpoint.origin] = (checkpoint.size, checkpoint.root, note)
        update = Update(checkpoint.origin, known, checkpoint.size, checkpoint.root, note)
        return Answer(200, cosignature.line().encode("utf-8"), update=update)

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
        """The latest cosigned checkpoint on disk (the monitoring GET)."""
        for origin in self.config.logs:
            if origin_hash(origin) == hashed_origin:
                latest = self.state.latest(origin)
                return None if latest is None else latest.note
        return None


class GroupCommit:
    """Writes updates in groups: while one group is being written (in a thread), the updates
    judged meanwhile wait and go together in the next one (one transaction, one fdatasync)."""

    def __init__(self, witness: Witness) -> None:
        self.witness = witness
        self._queue: list[tuple[Update, asyncio.Future[None]]] = []
        self._writing = False
        self._task: asyncio.Task[None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="commit")

    async def commit(self, update: Update) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.append((update, done))
        if not self._writing:
            self._writing = True
            self._task = loop.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                group, self._queue = self._queue, []
                updates = [u for u, _ in group]
                now = time.time_ns()
                try:
                    await loop.run_in_executor(self._pool, self.witness.state.advance, updates, now)
                except WitnessError as exc:
                    log.error("cosignatures not recorded, answering 503 from now on: %s", exc)
                    self.witness.broken = str(exc)
                    for _, done in group + self._queue:
                        done.set_exception(exc)
                    self._queue = []
                    return
                for _, done in group:
                    done.set_result(None)
        finally:
            self._writing = False

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _text(status: int, message: str) -> Answer:
    return Answer(status, (message + "\n").encode("utf-8"))


_WITNESS: web.AppKey[Witness] = web.AppKey("witness", Witness)
_COMMIT: web.AppKey[GroupCommit] = web.AppKey("commit", GroupCommit)


async def handle_add(request: web.Request) -> web.StreamResponse:
    if request.content_length is not None and request.content_length > MAX_BODY:
        return web.Response(status=413, text=f"a request is at most {MAX_BODY} bytes\n")
    body = await request.read()
    answer = request.app[_WITNESS].add(body)
    if answer.update is not None:
        try:
            await request.app[_COMMIT].commit(answer.update)
        except WitnessError as exc:
            return web.Response(status=503, text=f"cosignature not recorded: {exc}\n")
    headers = {"Content-Type": answer.content_type}
    return web.Response(status=answer.status, body=answer.body, headers=headers)


async def handle_checkpoint(request: web.Request) -> web.StreamResponse:
    note = request.app[_WITNESS].checkpoint(request.match_info["origin"])
    if note is None:
        return web.Response(status=404, text="no checkpoint of that log was cosigned here\n")
    return web.Response(body=note, headers={"Content-Type": "text/plain; charset=utf-8"})


def build_app(witness: Witness) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[_WITNESS] = witness
    app[_COMMIT] = commit = GroupCommit(witness)

    async def close(app: web.Application) -> None:
        commit.close()

    app.on_cleanup.append(close)
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
        try:
            await site.start()
        except OSError as exc:
            raise WitnessError(f"cannot listen on {config.listen}: {exc.strerror}") from None
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
