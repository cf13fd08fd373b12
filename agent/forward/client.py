"""The agent's end of the forwarding protocol (``agent.collector.protocol``): one mutual-TLS
HTTPS connection to the collector, kept alive between requests.

``http.client`` with an ``ssl.SSLContext``, no other dependency: TLS 1.2 at least, the
collector's certificate checked against the bundle's ``ca.crt`` and the URL's host name, the
host's own certificate and key presented. Connecting (TCP and the TLS handshake) and each read
have their own timeouts, so a collector that accepts and then says nothing cannot hold the
forwarder. Every failure to talk is one ``ForwardError``; what the collector answered is the
forwarder's to judge.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from agent.collector import layout
from agent.collector.protocol import HEAD_PATH, INGEST_PATH, LINES_TYPE, START_HEADER
from agent.errors import FormatError, ForwardError, KeyStoreError
from agent.journal.canonical import load_json
from agent.journal.keys import PublicKey

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0
#: Answers are small JSON documents; anything longer is not the protocol.
MAX_ANSWER_BYTES = 1 << 20


@dataclass(frozen=True)
class Bundle:
    """An enrollment bundle (``collector enroll --out DIR``; names in ``collector.layout``)."""

    directory: Path
    collector_key: PublicKey

    @classmethod
    def load(cls, directory: Path) -> Bundle:
        directory = Path(directory)
        for name in (layout.CLIENT_CERT, layout.CLIENT_KEY, layout.BUNDLE_CA):
            if not (directory / name).is_file():
                raise ForwardError(
                    f"{directory / name} is missing: --forward-tls takes the directory "
                    "`sealtrail collector enroll --out` wrote (with the host's client.key)"
                )
        try:
            key = PublicKey.load(directory / layout.BUNDLE_PUB)
        except KeyStoreError as exc:
            raise ForwardError(f"the collector's receipt key: {exc}") from None
        return cls(directory, key)

    def context(self) -> ssl.SSLContext:
        """TLS 1.2 or later, the server checked against the bundle's CA and its host name."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificate and host name
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_verify_locations(self.directory / layout.BUNDLE_CA)
            ctx.load_cert_chain(
                self.directory / layout.CLIENT_CERT, self.directory / layout.CLIENT_KEY
            )
        except (OSError, ssl.SSLError) as exc:
            raise ForwardError(f"{self.directory}: cannot load the TLS files: {exc}") from None
        return ctx


class Answer(NamedTuple):
    """An HTTP answer: status, the JSON object (empty if it was not one), Retry-After in
    seconds (None without one), and why the body is not a JSON object (None if it is)."""

    status: int
    body: dict[str, Any]
    retry_after: float | None
    problem: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """``https://HOST[:PORT][/PREFIX]``."""

    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        try:
            parts = urlsplit(url)
            port = parts.port or 443
        except ValueError as exc:
            raise ForwardError(f"collector URL {url!r}: {exc}") from None
        if parts.scheme != "https" or not parts.hostname:
            raise ForwardError(f"collector URL {url!r}: must be https://HOST[:PORT]")
        if parts.query or parts.fragment or parts.username:
            raise ForwardError(f"collector URL {url!r}: takes no user, query or fragment")
        return cls(parts.hostname, port, parts.path.rstrip("/"))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}{self.prefix}"


class CollectorClient:
    """Requests to one collector over one kept-alive connection (reopened after a failure)."""

    def __init__(
        self,
        endpoint: Endpoint,
        context: ssl.SSLContext,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> None:
        self.endpoint = endpoint
        self._context = context
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._conn: http.client.HTTPSConnection | None = None

    def head(self) -> Answer:
        return self._request("GET", HEAD_PATH, None, {})

    def ingest(self, start: int, body: memoryview) -> Answer:
        """POST the lines in ``body``; http.client sends the headers, then ``body`` itself
        (no copy; TCP_NODELAY, so the second write does not wait for an ACK)."""
        headers = {"Content-Type": LINES_TYPE, START_HEADER: str(start)}
        return self._request("POST", INGEST_PATH, body, headers)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def abort(self) -> None:
        """From another thread: cut the connection, so a request blocked on it fails now."""
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is None:
            ep = self.endpoint
            conn = http.client.HTTPSConnection(
                ep.host, ep.port, context=self._context, timeout=self._connect_timeout
            )
            conn.connect()  # TCP and TLS handshake, within the connect timeout
            assert conn.sock is not None
            conn.sock.settimeout(self._read_timeout)
            self._conn = conn
        return self._conn

    def _request(
        self, method: str, path: str, body: memoryview | None, headers: dict[str, str]
    ) -> Answer:
        try:
            conn = self._connection()
            conn.request(method, self.endpoint.prefix + path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read(MAX_ANSWER_BYTES + 1)
            retry_after = response.getheader("Retry-After")
            if len(data) > MAX_ANSWER_BYTES or response.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ForwardError(f"{self.endpoint}: {_describe(exc)}") from None
        doc, problem = _json_object(data)
        return Answer(response.status, doc, parse_retry_after(retry_after), problem)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed before an answer"
    return str(exc) or type(exc).__name__


def _json_object(data: bytes) -> tuple[dict[str, Any], str | None]:
    """The answer's JSON object, or {} and what it is instead (a hostile collector's nesting
    thousands deep included: that is a protocol problem, not a crash of the forwarder)."""
    try:
        value = load_json(data)
    except FormatError as exc:
        return {}, f"the answer ({len(data)} bytes) is {exc}"
    if not isinstance(value, dict):
        return {}, f"the answer is a JSON {type(value).__name__}, not an object"
    return value, None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After (RFC 9110 §10.2.3) in seconds from now: delay-seconds or an HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit() and value.isascii():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))
