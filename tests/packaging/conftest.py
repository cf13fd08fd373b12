"""The packaging tests (``make test-packaging``): the .deb under real systemd, in a container.

They need root, systemd-nspawn and debootstrap, and the .deb (``make deb``); ``make
test-packaging`` provides all three and sets ``SEALTRAIL_PACKAGING=1``. Without it they are
deselected, not skipped (``pytest tests`` is not where they run). The tests of a module share one
booted container and run in file order: each starts from the state the previous one left.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.container import REPO, BootTimeout, Container, cached_rootfs

HERE = Path(__file__).resolve().parent
ENABLED = os.environ.get("SEALTRAIL_PACKAGING") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    ours = [item for item in items if HERE in Path(str(item.path)).parents]
    if ours:
        config.hook.pytest_deselected(items=ours)
        items[:] = [item for item in items if item not in ours]


@pytest.fixture(scope="session")
def deb() -> Path:
    debs = sorted((REPO / "build" / "deb").glob("sealtrail_*_amd64.deb"))
    assert len(debs) == 1, f"expected one .deb in build/deb (make deb), found {debs}"
    return debs[0]


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    yield from _booted(attempts=2)


def _booted(attempts: int) -> Iterator[Container]:
    """A booted container; a boot that hangs is tried once more on a fresh copy.

    The rootfs holds no sealtrail yet when it boots (the tests install the .deb), so a hung
    boot is this harness's machine, not the product: CI once saw one boot (of dozens, 0.4 s
    each) not finish in 60 s, with nothing in the console log. What it waited on is printed.
    """
    for attempt in range(1, attempts + 1):
        ct = Container(cached_rootfs())
        try:
            try:
                seconds = ct.boot()
            except BootTimeout as exc:
                if attempt == attempts:
                    raise
                print(f"\npackaging: boot {attempt} did not finish, booting again: {exc}")
                continue
            print(f"\npackaging: container booted in {seconds:.1f} s")
            yield ct
            return
        finally:
            ct.close()
