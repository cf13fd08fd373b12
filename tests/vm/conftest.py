"""Tests that only the stock-kernel VM can run (``make test-vm``, tests/vm/run.sh).

Marker ``lsm``: the test needs BPF-LSM, which the development kernel refuses. Outside the VM
(``SEALTRAIL_VM`` unset) such tests are deselected, not skipped: they are not this host's to run.
Inside the VM they are also marked ``kernel``, so under CI a skip there is a failure.
"""

from __future__ import annotations

import os

import pytest

IN_VM = os.environ.get("SEALTRAIL_VM") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lsm: needs BPF-LSM; runs only inside the stock-kernel VM (make test-vm)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_VM:
        return
    vm_only = [item for item in items if item.get_closest_marker("lsm") is not None]
    if vm_only:
        config.hook.pytest_deselected(items=vm_only)
        items[:] = [item for item in items if item.get_closest_marker("lsm") is None]
