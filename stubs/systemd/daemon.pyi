# The part of systemd-python 235 (systemd/daemon.py, _daemon.c) sealtrail calls; the package
# ships no type information.
from collections.abc import Sequence

LISTEN_FDS_START: int

# fds: a sequence or left out (235 fails on fds=None)
def notify(
    status: str, unset_environment: bool = False, pid: int = 0, fds: Sequence[int] = ...
) -> bool: ...
def listen_fds_with_names(unset_environment: bool = True) -> dict[int, str]: ...
