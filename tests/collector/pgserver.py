"""A throwaway PostgreSQL server: Debian's ``initdb`` and ``pg_ctl`` (/usr/lib/postgresql/*/bin)
in a temporary directory, on a free loopback port with its own socket directory, as ``nobody``
when run as root (initdb refuses root). Used by the tests' fixture and bench/collector_store.py.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class NoPostgres(Exception):
    """The server binaries are not installed."""


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin holding initdb and pg_ctl."""
    found = []
    for directory in Path("/usr/lib/postgresql").glob("*/bin"):
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            match = re.fullmatch(r"\d+", directory.parent.name)
            found.append((int(match[0]) if match else 0, directory))
    return max(found)[1] if found else None


@dataclass
class PgServer:
    bin: Path
    root: Path
    port: int
    user: str | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, user=self.user, capture_output=True, text=True, check=check, timeout=120
        )

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
        self.run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        stopped = self.run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False
        )
        if stopped.returncode != 0:  # the postmaster we started, by its pid, if still there
            with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
                pid = int((self.data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGKILL)

    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return "(no server log)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def temporary_server() -> Iterator[PgServer]:
    """A running server, stopped (and its directory removed) when the block ends."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise NoPostgres(
            "PostgreSQL server binaries missing (apt-get install postgresql; make bootstrap)"
        )
    user = "nobody" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="sealtrail-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    server = PgServer(bin_dir, root, 0, user)
    started = False
    try:
        server.run(
            str(bin_dir / "initdb"),
            "-D",
            str(server.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        )
        for _attempt in range(3):  # the free port may be taken between the probe and the start
            server.port = _free_port()
            try:
                server.start()
            except subprocess.CalledProcessError:
                continue
            started = True
            break
        if not started:
            raise RuntimeError(f"PostgreSQL did not start:\n{server.log()}")
        yield server
    finally:
        if started:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
