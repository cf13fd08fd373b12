"""A collector with a fleet log, its witnesses and one host, all real processes on loopback;
and test witnesses that misbehave (in-process aiohttp servers)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from agent.c2sp.keys import COSIGNATURE_V1, Signer
from agent.c2sp.note import Note, Signature
from agent.collector.protocol import FLEET_CHECKPOINT_PATH
from agent.journal.keys import KeyStore
from tests.collector.journals import HostJournal
from tests.collector.server_proc import Client, Collector, free_port, sealtrail
from tests.witness.witnessproc import WitnessProc


class FakeWitness:
    """A witness that answers add-checkpoint badly: ``lying`` (a cosignature line by its key
    whose signature is wrong) or ``slow`` (no answer for a long time)."""

    def __init__(self, name: str, mode: str) -> None:
        self.signer = Signer.generate(name, COSIGNATURE_V1)
        self.mode = mode
        self.port = free_port()
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _add(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        if self.mode == "slow":
            await asyncio.sleep(20)
        note = Note.parse(body[body.index(b"\n\n") + 2 :])
        blob = bytearray(self.signer.sign(note.text, int(time.time())))
        blob[20] ^= 0xFF  # a cosignature over something else
        line = Signature(self.signer.name, self.signer.key_id, bytes(blob)).line()
        return web.Response(text=line)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/add-checkpoint", self._add)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class Fleet:
    """``coll`` with a witnesses.policy of ``witnesses`` (name -> (vkey, url)) and quorum."""

    def __init__(self, root: Path, store: str | None) -> None:
        self.root = root
        self.collector = Collector(root / "coll", store=store)
        self.vkey = sealtrail("collector", "fleet-vkey", "--dir", str(self.collector.dir)).stdout
        self.vkey = self.vkey.strip()
        self.witnesses: list[WitnessProc] = []
        self.fakes: list[FakeWitness] = []
        self.host = HostJournal(root, "host-a")
        KeyStore(self.host.keys).init()
        self.client: Client | None = None
        self.last_answer: dict[str, object] = {}

    def witness(self, name: str) -> WitnessProc:
        w = WitnessProc(self.root / name, f"{name}.example", [self.vkey])
        self.witnesses.append(w)
        return w.start()

    def fake(self, name: str, mode: str) -> FakeWitness:
        f = FakeWitness(f"{name}.example", mode)
        self.fakes.append(f)
        return f

    def policy(self, members: list[tuple[str, str, str]], quorum: str = "2") -> Path:
        lines = [f"log {self.vkey}"]
        lines += [f"witness {n} {vkey} {url}" for n, vkey, url in members]
        lines += [f"group fleet {quorum} {' '.join(n for n, _, _ in members)}", "quorum fleet"]
        path = self.collector.dir / "witnesses.policy"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> Client:
        if self.client is None:
            bundle = self.collector.enroll("host-a", self.host.pub, self.root / "host-a-bundle")
            self.client = self.collector.start().client(bundle)
        elif not self.collector.alive():
            self.collector.start()
        return self.client

    def send(self, records: int, batch: int = 97) -> int:
        """Write ``records`` more records to the host's journal and forward all of it."""
        client = self.start()
        self.host.fill(records, seal_every=40)
        lines = self.host.lines()
        pos = client.head().doc["size"]
        while pos < len(lines) - 1:
            ans = client.ingest(pos, lines[pos : min(pos + batch, len(lines))])
            assert ans.status == 200, ans.doc
            self.last_answer = ans.doc
            if ans.doc["size"] == pos:
                break
            pos = ans.doc["size"]
        return int(pos)

    def published(self) -> bytes | None:
        assert self.client is not None
        ans = self.client.request("GET", FLEET_CHECKPOINT_PATH)
        if ans.status == 404:
            return None
        assert ans.status == 200, ans.doc
        return str(ans.doc).encode() if not isinstance(ans.doc, bytes) else ans.doc

    def wait_published(self, pred: Callable[[bytes], bool], seconds: float = 30) -> bytes:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            note = self.published()
            if note is not None and pred(note):
                return note
            time.sleep(0.1)
        raise AssertionError(f"no such fleet checkpoint in {seconds} s: {self.published()!r}")

    origin = "coll"  # the collector's name (Collector's default): the fleet log's origin

    def wait_log(self, text: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if text in self.collector.log.read_text():
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self.collector.stop()
        for w in self.witnesses:
            w.cleanup()
        for f in self.fakes:
            f.stop()
