"""The service's side of sd_notify(3), through systemd-python's ``systemd.daemon``.

What the agent tells systemd: ``READY=1`` once it records and enforces, and again after each
reload; ``RELOADING=1`` before a reload, with ``MONOTONIC_USEC`` (``Type=notify-reload`` waits
for both, then for ``READY=1``); ``STATUS=`` lines; ``WATCHDOG=1`` (the caller pings from its
main loop only); ``STOPPING=1``.

The file-descriptor store keeps kernel objects alive across a restart of the agent (its
fanotify group: closing it would allow what it holds): ``Notifier.store_fds`` hands fds to
systemd under a name (``FDSTORE=1``, ``FDNAME=``; the unit needs ``FileDescriptorStoreMax=``),
``Notifier.remove_fds`` drops them from the store, and ``received_fds`` returns what systemd
passed back to this start (``LISTEN_FDS``/``LISTEN_FDNAMES``), by name.

Outside systemd (no ``$NOTIFY_SOCKET``) every notification is a silent no-op, and
``received_fds`` is empty (no ``$LISTEN_FDS`` for this pid); ``systemd.daemon`` is then not
even imported, so the agent runs where systemd-python is not installed (the stock-kernel test
VM, which boots without systemd).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from types import ModuleType

# sd_notify(3): "FDNAME=... may contain ASCII characters, excluding control characters and
# ':', and may be at most 255 characters" (systemd's fdname_is_valid)
_FDNAME_MAX = 255
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def _daemon() -> ModuleType:
    """systemd-python's ``systemd.daemon``, imported where systemd talks to this process."""
    from systemd import daemon

    return daemon


def watchdog_interval_s() -> float | None:
    """How often to ping: half of ``$WATCHDOG_USEC`` (sd_watchdog_enabled(3) advises pinging
    before half the timeout passes), if it is set for this process; else None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


def check_fdname(name: str) -> str:
    """``name`` if systemd takes it as an ``FDNAME=``; ``ValueError`` saying why not."""
    if not name or len(name) > _FDNAME_MAX:
        raise ValueError(f"fd name {name!r}: 1 to {_FDNAME_MAX} characters")
    if not all(" " <= c <= "~" for c in name) or ":" in name:
        raise ValueError(f"fd name {name!r}: printable ASCII without ':'")
    return name


def received_fds() -> dict[str, list[int]]:
    """The fds systemd passed to this process at start, by name, in the order passed (the fd
    store's, and socket activation's; a name systemd does not know is ``unknown``). It reads
    ``$LISTEN_FDS``, ``$LISTEN_FDNAMES`` and ``$LISTEN_PID`` once and unsets them (a child
    must not take them for its own): call it once, early. Each fd is close-on-exec, and the
    caller's to close; a stored fd stays in the store until ``Notifier.remove_fds``."""
    if "LISTEN_FDS" not in os.environ:
        return {}
    passed = _daemon().listen_fds_with_names(unset_environment=True)
    for name in _LISTEN_VARS:  # libsystemd unset them in the C environment, not in os.environ
        os.environ.pop(name, None)
    out: dict[str, list[int]] = {}
    for fd, name in sorted(passed.items()):
        out.setdefault(name, []).append(fd)
    return out


class Notifier:
    """sd_notify for one service process (module doc); a no-op where ``enabled`` is False."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self.watchdog_interval_s = watchdog_interval_s()

    def notify(self, *, fds: Sequence[int] = (), **fields: str) -> None:
        """One datagram: ``KEY=value`` lines (keys upper-cased), ``fds`` attached."""
        if not self.enabled:
            return
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        _daemon().notify(message, fds=list(fds))

    def ready(self, status: str) -> None:
        self.notify(ready="1", status=status)

    def reloading(self) -> None:
        """Before a reload; ``READY=1`` ends it. systemd takes ``MONOTONIC_USEC`` to tell this
        reload from an earlier one, so it is read as the message is sent."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(reloading="1", monotonic_usec=str(usec))

    def status(self, status: str) -> None:
        self.notify(status=status)

    def watchdog(self) -> None:
        self.notify(watchdog="1")

    def stopping(self) -> None:
        self.notify(stopping="1")

    def store_fds(self, fds: Sequence[int], name: str) -> bool:
        """Hand ``fds`` to systemd's fd store under ``name``; systemd keeps a duplicate of each
        (this process may close its own) and passes them to the next start of the service
        (``received_fds``). True if sent: outside systemd nothing keeps them. systemd does
        not answer: it logs, and keeps nothing, where the unit's ``FileDescriptorStoreMax=``
        is 0 or reached."""
        if not fds:
            raise ValueError("store_fds: no fds")
        self.notify(fds=fds, fdstore="1", fdname=check_fdname(name))
        return self.enabled

    def remove_fds(self, name: str) -> None:
        """Drop every fd stored under ``name`` from the store (systemd closes its copies)."""
        self.notify(fdstoreremove="1", fdname=check_fdname(name))
