"""The policy load transaction: whatever the directory holds, a result and never an exception."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.enforce.enforcer import InstallResult
from agent.errors import KernelError
from agent.policy.compile import CompiledPolicySet
from agent.policy.mechanisms import HostCapabilities
from agent.policy.source import PolicySet
from agent.policyload import LoadResult, load_policies
from tests.unit.daemon.fakes import RecordingEnforcer

REPO = Path(__file__).resolve().parents[3]
CAPS = HostCapabilities(lsm=False, cgroup_sock=True, fanotify=True, send_signal=True)


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    shutil.copy(REPO / "policies" / "privileged-ports.toml", directory)
    return directory


def test_loaded_then_a_mismatch_names_the_set_in_force(policies: Path, tmp_path: Path) -> None:
    enforcer = RecordingEnforcer(tmp_path)
    loaded = load_policies(policies, "start", enforcer, CAPS)
    assert loaded.result == "loaded" and loaded.digest == enforcer.digest
    assert loaded.files == (str(policies / "privileged-ports.toml"),)
    assert loaded.record("start") == ("policy_loaded", {"digest": loaded.digest,
                                      "files": list(loaded.files), "trigger": "start"})  # fmt: skip
    enforcer.install_errors = ("guard map differs",)
    mismatch = load_policies(policies, "SIGHUP", enforcer, CAPS)
    assert (mismatch.result, mismatch.errors) == ("mismatch", ("guard map differs",))
    assert mismatch.status()["errors"] == ["guard map differs"]
    assert mismatch.record("SIGHUP")[0] == "policy_mismatch"


def test_no_policy_files_observes_at_start_and_is_rejected_on_reload(tmp_path: Path) -> None:
    enforcer = RecordingEnforcer(tmp_path)
    start = load_policies(tmp_path / "missing", "start", enforcer, CAPS)
    assert start.result == "loaded" and start.files == ()
    reload = load_policies(tmp_path / "missing", "SIGHUP", enforcer, CAPS)
    assert reload.result == "rejected" and reload.digest == start.digest
    assert "no *.toml policy files" in reload.errors[0]
    assert reload.status() == {"result": "rejected", "errors": list(reload.errors),
                               "kept": start.digest}  # fmt: skip


def test_a_bad_policy_is_rejected_with_its_findings(policies: Path, tmp_path: Path) -> None:
    (policies / "bad.toml").write_text('name = "bad"\nmode = "sometimes"\n')
    result = load_policies(policies, "start", RecordingEnforcer(tmp_path), CAPS)
    assert result.result == "rejected" and result.digest is None
    assert any("bad.toml" in line for line in result.errors)
    rtype, fields = result.record("start")
    assert rtype == "policy_rejected" and fields["kept"] is None


class FailingEnforcer(RecordingEnforcer):
    def __init__(self, tmp: Path, error: Exception) -> None:
        super().__init__(tmp)
        self.error = error

    def install(
        self, policy_set: PolicySet, compiled: CompiledPolicySet | None = None
    ) -> InstallResult:
        raise self.error


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (KernelError("guard: cannot attach\nsecond line"), "guard: cannot attach"),
        (ValueError("a bug"), "ValueError: a bug"),  # a bug must not stop the agent either
    ],
)
def test_an_install_that_fails_is_rejected_not_raised(
    policies: Path, tmp_path: Path, error: Exception, line: str
) -> None:
    result = load_policies(policies, "SIGHUP", FailingEnforcer(tmp_path, error), CAPS)
    assert result == LoadResult("rejected", None, (), result.errors)
    assert result.errors[0] == line
