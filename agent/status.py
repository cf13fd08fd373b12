"""The agent's status files in ``RUN_DIR``: ``status.json``, its pid and the result of the last
policy load, so ``sealtrail policy reload`` can signal it and report what happened; and what
the forwarder writes (``forward.json``). ``sealtrail status`` reads both."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATUS_NAME = "status.json"


def write_status(run_dir: Path, status: dict[str, Any], name: str = STATUS_NAME) -> None:
    """Replace the status file atomically (a reader never sees half of it)."""
    run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = run_dir / f".{name}.{os.getpid()}"
    tmp.write_text(json.dumps(status, sort_keys=True) + "\n")
    os.replace(tmp, run_dir / name)


def read_status(run_dir: Path, name: str = STATUS_NAME) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
