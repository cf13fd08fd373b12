"""sd_notify(3) for Type=notify units: READY, STATUS, WATCHDOG, STOPPING.

Hand-written because the protocol is one datagram to $NOTIFY_SOCKET, and systemd-python needs
libsystemd headers and a compiler to install (no wheels). Silent no-op outside systemd.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace
        self._addr = addr or None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval_s = int(usec) / 2e6 if wanted else None

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, **fields: str) -> None:
        if self._addr is None:
            return
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(msg, self._addr)

    def ready(self, status: str) -> None:
        self.notify(ready="1", status=status)

    def status(self, status: str) -> None:
        self.notify(status=status)

    def watchdog(self) -> None:
        self.notify(watchdog="1")

    def stopping(self) -> None:
        self.notify(stopping="1")
