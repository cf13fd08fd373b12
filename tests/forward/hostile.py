"""A hostile collector for the forwarder's tests: a real HTTPS server on 127.0.0.1 with a real
collector directory's TLS files and receipt key (``collector init``/``enroll``), speaking the
protocol but answering what ``answer`` says (lying heads, receipts for bogus roots, ...)."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agent.collector import layout
from agent.collector.protocol import START_HEADER, Receipt
from agent.collector.signing import load_signing_key
from agent.forward.forwarder import ForwardConfig, Forwarder
from agent.forward.pacing import Pacing
from tests.collector.server_proc import Collector
from tests.unit.journal.conftest import Journal

#: (method, path, Sealtrail-Start or None, body) -> (status, body bytes or a JSON object)
Handler = Callable[[str, str, int | None, bytes], tuple[int, Any]]


class HostileCollector:
    def __init__(self, root: Path, journal: Journal, answer: Handler) -> None:
        self.coll = Collector(root / "coll")
        self.bundle = self.coll.enroll(journal.host, journal.keys / "journal.pub", root / "bundle")
        self.key = load_signing_key(self.coll.dir / "collector.key")
        self.host = journal.host
        self.answer = answer
        self.requests: list[tuple[str, int | None, int]] = []
        outer = self

        class Handle(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                start = self.headers.get(START_HEADER)
                seq = int(start) if start is not None else None
                outer.requests.append((self.command, seq, body.count(b"\n")))
                status, doc = outer.answer(self.command, self.path, seq, body)
                data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.coll.dir / layout.SERVER_CERT, self.coll.dir / layout.SERVER_KEY)
        ctx.load_verify_locations(self.coll.dir / layout.CA_CERT)
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handle)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def receipt(self, size: int, root: bytes) -> dict[str, Any]:
        return Receipt.sign(self.key, "coll", self.host, size, root, None).to_dict()

    def forwarder(self, journal: Journal, durable: int, run_dir: Path) -> Forwarder:
        config = ForwardConfig(
            f"https://127.0.0.1:{self.port}",
            self.bundle,
            pacing=Pacing(rate=0, batch_interval=0),
            connect_timeout=5,
            read_timeout=5,
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        return Forwarder.open(config, journal.dir, host=journal.host, durable=durable,
                              run_dir=run_dir)  # fmt: skip

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
