# The part of systemd-python 235 (systemd/journal.py) sealtrail calls; the package ships no
# type information.
import logging
from collections.abc import Callable
from typing import Any

class JournalHandler(logging.Handler):
    def __init__(
        self,
        level: int = logging.NOTSET,
        sender_function: Callable[..., None] = ...,
        **kwargs: Any,
    ) -> None: ...
