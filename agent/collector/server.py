"""``sealtrail collector serve``: the HTTPS server with mutual TLS that hosts forward to.

Built on aiohttp because its request handler sees the verified client certificate (through
the transport's ``ssl_object``), which binds each connection to one enrolled host; of the ASGI
servers on the package index today, uvicorn 0.54, hypercorn 0.18 and granian 2.8 do not pass
the peer certificate to the application (docs/collector.md, "Why aiohttp").

The event loop only parses HTTP and authenticates; verification and the store's durable commit
are CPU- and IO-bound, so they run in a small thread pool (native verification and SQLite
release the GIL), one batch per host at a time (a lock per host), a bounded number at once.
Uploads are admitted on their headers, before their bodies are read: at most
``HOST_IN_FLIGHT`` per host (429 beyond) and bodies of at most ``BODY_BUDGET_FACTOR`` x the
body limit in all (503 beyond), both with Retry-After, which the forwarder honours. Slow
clients are cut off: TLS handshake, request headers and body each have a timeout; bodies over
the limit get 413 before they are read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agent import __version__
from agent.collector import pki
from agent.collector.config import CollectorConfig
from agent.collector.fleet import POLICY_FILE, FleetPublisher, covering, load_policy, note_signer
from agent.collector.ingest import Accepted, Gap, Ingest, Rejected
from agent.collector.keyfiles import read_private
from agent.collector.protocol import (
    FLEET_CHECKPOINT_PATH,
    HEAD_PATH,
    HEALTH_PATH,
    INGEST_PATH,
    LINES_TYPE,
    METRICS_PATH,
    START_HEADER,
)
from agent.collector.signing import load_signing_key
from agent.collector.store import open_store
from agent.collector.store.base import Host, Store
from agent.errors import SealtrailError

log = logging.getLogger(__name__)

#: Batches judged at once (threads); more wait, up to ``MAX_WAITING``, then 503.
WORKERS = 4
MAX_WAITING = 256
RETRY_AFTER_SECONDS = 1
#: Batches of one host being read, waiting or judged at once; beyond, 429 before the body is
#: read. A host's batches are judged one at a time anyway (a lock per host), and a forwarder
#: sends one at a time: more in flight are only a host holding memory and others' places.
HOST_IN_FLIGHT = 2
#: Bodies being read or held, in bytes, are at most this many times ``body_bytes`` (64 MiB by
#: default); a batch that would go beyond gets 503 before its body is read. Its declared
#: Content-Length is reserved (``body_bytes`` for a chunked body) until its answer is made.
BODY_BUDGET_FACTOR = 4


class Metrics:
    """The collector's Prometheus metrics (names per the Prometheus naming conventions; no
    label with unbounded values: results and reasons are fixed sets, hosts are not labels)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.batches = Counter(
            "sealtrail_collector_batches", "Ingest batches by result", ["result"], registry=r
        )
        self.records = Counter("sealtrail_collector_records_accepted", "Records stored", registry=r)
        self.skipped = Counter(
            "sealtrail_collector_records_resent",
            "Records re-sent that were already held (same bytes, not stored again)",
            registry=r,
        )
        self.seconds = Histogram(
            "sealtrail_collector_ingest_seconds",
            "Time to verify and store one batch",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.refused = Counter(
            "sealtrail_collector_requests_refused",
            "Requests refused before ingest, by reason",
            ["reason"],
            registry=r,
        )
        self.waiting = Gauge(
            "sealtrail_collector_batches_waiting", "Batches waiting for a worker", registry=r
        )
        self.held = Gauge(
            "sealtrail_collector_body_bytes_reserved",
            "Bytes reserved for request bodies being read or judged",
            registry=r,
        )


@dataclass
class _State:
    ingest: Ingest
    config: CollectorConfig
    metrics: Metrics
    pool: concurrent.futures.ThreadPoolExecutor
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    waiting: int = 0
    #: batches per host admitted and not answered yet (``HOST_IN_FLIGHT``)
    in_flight: dict[str, int] = field(default_factory=dict)
    #: bytes reserved for the bodies of those batches (``BODY_BUDGET_FACTOR``)
    reserved: int = 0

    @property
    def budget(self) -> int:
        return BODY_BUDGET_FACTOR * self.config.body_limit

    def admit(self, host: str, claim: int) -> web.Response | None:
        """Reserve a place for one batch of ``host`` of ``claim`` bytes, or the refusal."""
        if self.in_flight.get(host, 0) >= HOST_IN_FLIGHT:
            self.metrics.refused.labels("host-busy").inc()
            return _busy(
                429, f"{HOST_IN_FLIGHT} batches of this host are in flight; send one at a time"
            )
        if self.waiting >= MAX_WAITING or self.reserved + claim > self.budget:
            self.metrics.refused.labels("busy").inc()
            return _busy(503, "too many batches waiting; retry later")
        self.in_flight[host] = self.in_flight.get(host, 0) + 1
        self.reserved += claim
        self.metrics.held.set(self.reserved)
        return None

    def release(self, host: str, claim: int) -> None:
        left = self.in_flight[host] - 1
        if left:
            self.in_flight[host] = left
        else:
            del self.in_flight[host]
        self.reserved -= claim
        self.metrics.held.set(self.reserved)


_STATE: web.AppKey[_State] = web.AppKey("sealtrail", _State)


def _error(status: int, error: str, detail: str, **extra: object) -> web.Response:
    return web.json_response({"error": error, "detail": detail, **extra}, status=status)


def _busy(status: int, detail: str) -> web.Response:
    return web.json_response(
        {"error": "busy", "detail": detail},
        status=status,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _peer_host(request: web.Request, state: _State) -> Host | web.Response:
    """The enrolled host the verified client certificate is bound to."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        state.metrics.refused.labels("no-certificate").inc()
        return _error(401, "unauthenticated", "a client certificate is required")
    host = state.ingest.store.host_by_fingerprint(pki.fingerprint(der))
    if host is None:
        state.metrics.refused.labels("unenrolled-certificate").inc()
        return _error(
            403,
            "unenrolled",
            "this client certificate is not bound to an enrolled host (collector enroll)",
        )
    return host


async def _run(state: _State, fn: Callable[[], object]) -> object:
    return await asyncio.get_running_loop().run_in_executor(state.pool, fn)


async def handle_head(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    host = _peer_host(request, state)
    if isinstance(host, web.Response):
        return host
    doc = await _run(state, lambda: state.ingest.head(host))
    return web.json_response(doc)


async def handle_ingest(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    host = _peer_host(request, state)
    if isinstance(host, web.Response):
        return host
    if request.content_type != LINES_TYPE:
        state.metrics.refused.labels("content-type").inc()
        return _error(415, "content-type", f"the body must be {LINES_TYPE}")
    start_text = request.headers.get(START_HEADER, "")
    if not start_text.isascii() or not start_text.isdigit() or len(start_text) > 16:
        state.metrics.refused.labels("bad-request").inc()
        return _error(400, "bad-request", f"{START_HEADER} must be the seq of the first line")
    start = int(start_text)
    limit = state.config.body_limit
    if request.content_length is not None and request.content_length > limit:
        state.metrics.refused.labels("too-large").inc()
        return _error(413, "too-large", f"a batch may have at most {limit} bytes")
    # Admitted before a byte of the body is read: memory for bodies stays within the budget,
    # and one host cannot take the places of others.
    claim = limit if request.content_length is None else request.content_length
    refused = state.admit(host.name, claim)
    if refused is not None:
        return refused
    try:
        return await _ingest(request, state, host, start)
    finally:
        state.release(host.name, claim)


async def _ingest(request: web.Request, state: _State, host: Host, start: int) -> web.Response:
    limit = state.config.body_limit
    try:
        body = await asyncio.wait_for(request.read(), state.config.timeouts.request_seconds)
    except TimeoutError:
        state.metrics.refused.labels("timeout").inc()
        return _error(408, "timeout", "the body did not arrive in time")
    except web.HTTPRequestEntityTooLarge:
        state.metrics.refused.labels("too-large").inc()
        return _error(413, "too-large", f"a batch may have at most {limit} bytes")
    if not body:
        return _error(400, "bad-request", "empty batch")
    lock = state.locks.setdefault(host.name, asyncio.Lock())
    state.waiting += 1
    state.metrics.waiting.inc()
    try:
        async with lock:
            started = time.perf_counter()
            outcome = await _run(state, lambda: state.ingest.ingest(host, start, body))
            state.metrics.seconds.observe(time.perf_counter() - started)
    finally:
        state.waiting -= 1
        state.metrics.waiting.dec()
    answer = _answer(state, outcome)
    if isinstance(outcome, Accepted):
        fleet = await _run(state, lambda: covering(state.ingest.store, host.name))
        if fleet is not None:
            answer = _with(answer, fleet=fleet)
    return answer


def _with(answer: web.Response, **more: object) -> web.Response:
    assert answer.text is not None
    return web.json_response({**json.loads(answer.text), **more}, status=answer.status)


def _answer(state: _State, outcome: object) -> web.Response:
    m = state.metrics
    if isinstance(outcome, Accepted):
        m.batches.labels("accepted").inc()
        m.records.inc(outcome.accepted)
        m.skipped.inc(outcome.skipped)
        return web.json_response(
            {
                "accepted": outcome.accepted,
                "skipped": outcome.skipped,
                "size": outcome.size,
                "pending": outcome.pending,
                "receipt": outcome.receipt.to_dict(),
            }
        )
    if isinstance(outcome, Gap):
        m.batches.labels("gap").inc()
        return _error(409, "gap", outcome.detail, size=outcome.size)
    assert isinstance(outcome, Rejected)
    m.batches.labels(outcome.error).inc()
    return _error(422, outcome.error, outcome.detail, seq=outcome.seq, size=outcome.size)


async def handle_fleet_checkpoint(request: web.Request) -> web.StreamResponse:
    """The latest fleet checkpoint that met the witnesses' quorum (404 before the first)."""
    state = request.app[_STATE]
    published = await _run(state, state.ingest.store.fleet_published)
    if published is None:
        return web.Response(status=404, text="no fleet checkpoint is published yet\n")
    assert isinstance(published, tuple)
    return web.Response(body=published[1], headers={"Content-Type": "text/plain; charset=utf-8"})


async def handle_health(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    return web.json_response({"ok": True, "version": __version__, "name": state.ingest.name})


async def handle_metrics(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    body = generate_latest(state.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure is a JSON answer; a store failure is a 503 the agent retries."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 413:
            return _error(413, "too-large", "the batch is over the body limit")
        return _error(exc.status, exc.reason.lower().replace(" ", "-"), exc.reason)
    except SealtrailError as exc:
        log.error("%s %s: %s", request.method, request.path, exc)
        return web.json_response(
            {"error": "unavailable", "detail": str(exc)},
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )


def build_app(
    ingest: Ingest, config: CollectorConfig, metrics: Metrics | None = None
) -> web.Application:
    app = web.Application(client_max_size=config.body_limit, middlewares=[_errors])
    app[_STATE] = _State(
        ingest,
        config,
        metrics or Metrics(),
        concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="ingest"),
    )
    app.router.add_get(HEAD_PATH, handle_head)
    app.router.add_post(INGEST_PATH, handle_ingest)
    app.router.add_get(HEALTH_PATH, handle_health)
    app.router.add_get(FLEET_CHECKPOINT_PATH, handle_fleet_checkpoint)
    app.router.add_get(METRICS_PATH, handle_metrics)

    async def shutdown(app: web.Application) -> None:
        app[_STATE].pool.shutdown(wait=True)

    app.on_cleanup.append(shutdown)
    return app


def tls_context(config: CollectorConfig) -> ssl.SSLContext:
    """TLS 1.2+ server context that requires a client certificate signed by the collector's
    CA (which ``enroll`` used; an operator's CA when configured)."""
    files = config.files
    key_path = config.path(files.server_key)
    read_private(key_path)  # refuses a key file others can read, saying why
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(config.path(files.server_cert), key_path)
        ctx.load_verify_locations(cafile=str(config.path(files.ca_cert)))
    except (OSError, ssl.SSLError) as exc:
        raise SealtrailError(f"cannot load the collector's TLS files: {exc}") from None
    return ctx


async def serve(
    config: CollectorConfig,
    *,
    store: Store | None = None,
    ready: Callable[[tuple[str, int]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``); ``ready`` gets the bound address."""
    store = store or open_store(config.store_url(), quarantine_limit=config.quarantine_limit)
    key = load_signing_key(config.path(config.files.signing_key))
    ingest = Ingest(store, config.name, key)
    app = build_app(ingest, config)
    t = config.timeouts
    runner = web.AppRunner(app, handle_signals=False, keepalive_timeout=t.idle_seconds)
    await runner.setup()
    loop = asyncio.get_running_loop()
    host, port = config.listen_address()
    handler = runner.server
    assert handler is not None  # set up above
    server = await loop.create_server(
        _HeaderTimeout.factory(handler, t.request_seconds),
        host,
        port,
        ssl=tls_context(config),
        ssl_handshake_timeout=t.handshake_seconds,
        backlog=1024,
        reuse_address=True,
    )
    stop = stop or asyncio.Event()
    publisher = FleetPublisher(
        store,
        note_signer(config.path(config.files.signing_key), config.name),
        load_policy(config.directory / POLICY_FILE),
        heartbeat=config.heartbeat_seconds,
    )
    if publisher.policy is None:
        log.warning("no %s: fleet checkpoints are signed by the collector alone", POLICY_FILE)
    publishing = asyncio.create_task(publisher.run(stop))
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()[:2]
    log.info("collector %s listening on %s:%s", config.name, bound[0], bound[1])
    if ready is not None:
        ready((str(bound[0]), int(bound[1])))
    try:
        await stop.wait()
    finally:
        stop.set()
        await publishing
        server.close()
        await server.wait_closed()
        await runner.cleanup()
        store.close()
        log.info("collector %s stopped", config.name)


class _HeaderTimeout(asyncio.Protocol):
    """Closes a connection whose request line and headers do not arrive in time.

    aiohttp times out idle keep-alive connections but not a client trickling its first
    request's headers; this wrapper gives each connection ``seconds`` to deliver them (the body
    has its own timeout in ``handle_ingest``), then hands every byte to aiohttp's protocol.
    """

    def __init__(self, inner: asyncio.Protocol, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._seen = b""

    @classmethod
    def factory(
        cls, make: Callable[[], asyncio.Protocol], seconds: float
    ) -> Callable[[], asyncio.Protocol]:
        return lambda: cls(make(), seconds)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._seconds, self._expire)
        self._inner.connection_made(transport)

    def _expire(self) -> None:
        if self._transport is not None:
            log.info("closing a connection that sent no complete request headers in time")
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            self._seen = (self._seen + data)[-4:]
            if b"\r\n\r\n" in self._seen or b"\r\n\r\n" in data:
                self._timer.cancel()
                self._timer = None
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
