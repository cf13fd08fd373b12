"""The guard attaches every program its object has (a hook compiled but never attached would
be a rule silently not enforced)."""

from __future__ import annotations

import pytest

from agent.enforce.guard import FILELESS_PROGRAMS, LINEAGE_PROGRAMS, LSM_PROGRAMS, PROGRAMS
from agent.errors import KernelError
from agent.kernel.loader import BpfObject, object_path


def test_every_guard_program_is_attached_by_the_loader() -> None:
    try:
        path = object_path("guard")
    except KernelError as exc:
        pytest.skip(str(exc))  # `make test` builds the probes first
    with BpfObject(path) as obj:
        sections = obj.programs()
    attached = set(PROGRAMS) | set(LINEAGE_PROGRAMS) | set(LSM_PROGRAMS) | set(FILELESS_PROGRAMS)
    assert set(sections) == attached
    assert {n for n, s in sections.items() if s.startswith("lsm")} == set(LSM_PROGRAMS)
    assert {n for n, s in sections.items() if s.startswith("cgroup")} == set(PROGRAMS)
