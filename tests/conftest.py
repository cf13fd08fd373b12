"""Shared test policy.

Kernel tests (marker ``kernel``) need root, BTF and the compiled probes. Where they cannot run
they skip on a developer's machine but FAIL when ``CI`` is set: CI runs on a machine that must
be able to run them, so a skip there would hide a broken setup. This covers skips raised inside
a test too (``pytest.skip``): under CI every skipped kernel test is reported as a failure.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = bool(os.environ.get("CI"))


def kernel_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "kernel has no BTF (/sys/kernel/btf/vmlinux)"
    if not (REPO / "agent/kernel/obj/events.bpf.o").exists():
        return "probes not built (make probes)"
    return None


@pytest.fixture(autouse=True)
def _kernel_requirements(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("kernel") is None:
        return
    reason = kernel_unavailable_reason()
    if reason is not None:
        pytest.skip(f"kernel test: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and item.get_closest_marker("kernel") is not None:
        report.outcome = "failed"
        report.longrepr = f"kernel test skipped under CI (not allowed): {report.longrepr}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Whatever test agents pinned and no test unpinned (an agent that was not stopped by
    ``stop_agent``) is detached here: no test leaves a program enforcing on the machine."""
    del session, exitstatus
    if os.geteuid() == 0:
        from tests.agentproc import unpin_all

        unpin_all()
