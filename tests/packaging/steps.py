"""What the packaging tests do in the container: install, attempt forbidden actions, wait for
units, verify the journal (shared by the test modules, each with a container of its own)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from tests.packaging.container import REPO_INSIDE, Container

AGENT = "sealtrail-agent.service"
COLLECTOR = "sealtrail-collector.service"
INSTALL = f"{REPO_INSIDE}/packaging/install.sh"
PUB = "/etc/sealtrail/keys/journal.pub"
JOURNAL = "/var/lib/sealtrail/journal"


def wait_state(ct: Container, unit: str, wanted: set[str], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = ct.run("systemctl", "is-active", unit, check=False).stdout.strip()
        if state in wanted or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def install(ct: Container, deb: Path) -> None:
    shutil.copy(deb, ct.root / "root" / "sealtrail.deb")
    ct.run("sh", INSTALL, "/root/sealtrail.deb")


def journal_verifies(ct: Container, strict: bool = False) -> str:
    args = ["sealtrail", "journal", "verify", "--journal", JOURNAL, "--key", PUB]
    return ct.run(*args, *(["--strict"] if strict else [])).stdout


# A process of the container's that attempts one action and says what happened: ALLOWED, or
# the errno's name. A forbidden exec would create MARKER (the binary is a copy of touch).
PROBE = r"""
import errno, socket, subprocess, sys
kind, arg = sys.argv[1], sys.argv[2]
try:
    if kind == "exec":
        subprocess.run([arg, "/root/exec-ran"], check=True)
    elif kind == "open":
        open(arg, "rb").close()
    elif kind == "bind":
        socket.socket().bind(("127.0.0.1", int(arg)))
    elif kind == "connect":
        socket.create_connection(("127.0.0.1", int(arg)), timeout=2).close()
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc.errno))
else:
    print("ALLOWED")
"""
# The container's agent sees the whole host's events (tracepoints are global), so the test's
# rules name only paths of the test's own, and none has fallback = "kill": an after-the-fact kill
# of a host process the container's fanotify does not see would hit whatever runs on this host.
FORBIDDEN_BIN = "/srv/pkgtest/bin/touch"
SECRET = "/srv/pkgtest/secret"
PORT = 4242  # nothing listens: an allowed connect is refused, a denied one is EPERM
TEST_POLICY = "/etc/sealtrail/policies/pkgtest.toml"
EXEC_RULE = """
[[rules]]
id = "pkgtest-bin"
operation = "exec"
targets.paths = ["/srv/pkgtest/bin/"]
action = "deny"
fallback = "audit"
"""
OPEN_RULE = f"""
[[rules]]
id = "pkgtest-secret"
operation = "open"
targets.paths = ["{SECRET}"]
action = "deny"
fallback = "audit"
"""
CONNECT_RULE = f"""
[[rules]]
id = "pkgtest-port"
operation = "connect"
targets.ports = [{PORT}]
action = "deny"
"""
POLICY = f'name = "pkgtest"\nmode = "enforce"\n{EXEC_RULE}{OPEN_RULE}{CONNECT_RULE}'


def attempt(ct: Container, kind: str, arg: str) -> str:
    proc = ct.spawn(["python3", "-c", PROBE, kind, arg])
    return proc.stdout.strip() or f"exit {proc.returncode}: {proc.stderr.strip()}"


def set_mode(ct: Container, policy: str, mode: str) -> None:
    path = f"/etc/sealtrail/policies/{policy}.toml"
    ct.run("sed", "-i", f's/^mode = "[a-z]*"/mode = "{mode}"/', path)
