"""``sealtrail policy check|test`` through agent.cli.main, and the shipped examples."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from agent.cli import main
from agent.policy.model import Policy

from .conftest import POLICIES, Write

FIXTURES = sorted((POLICIES / "tests").glob("*.fixtures.toml"))


def test_every_example_has_fixtures() -> None:
    names = {p.name.removesuffix(".fixtures.toml") for p in FIXTURES}
    assert {p.stem for p in POLICIES.glob("*.toml")} - {"web-servers-interpreters"} <= names


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_examples_pass_their_fixtures(fixture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "test", str(fixture)]) == 0
    assert main(["policy", "test", str(fixture), "--policies", str(POLICIES)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"(\d+)/\1 cases pass", out), out


def test_examples_check_clean_on_this_kind_of_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(POLICIES), "--host"]) == 0
    out = capsys.readouterr().out
    assert "0 errors, 0 warnings, digest sha256:" in out
    assert re.search(r"web-no-shell +exec +kill +fanotify\+sigkill", out)


def test_check_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", "--json", str(POLICIES)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["digest"].startswith("sha256:") and report["findings"] == []


def test_check_invalid_exits_1_and_names_position(
    write: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        'name = "p"\nmode = "enforce"\n[[rules]]\nid = "r"\noperation = "exec"\n'
        'action = "deny"\ntargets.paths = ["tmp/"]\n'
    )
    assert main(["policy", "check", str(path)]) == 1
    assert f"{path}:7:18: error: rules[0].targets.paths[0] (rule 'r'):" in capsys.readouterr().out


def test_check_usage_errors_exit_2(tmp_path: Path) -> None:
    assert main(["policy", "check", str(tmp_path / "missing")]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["policy", "check", "--bogus"])
    assert exc.value.code == 2


def test_mismatch_is_reported_with_position(
    write: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    fixture = write(
        f'policies = ["{POLICIES / "tmp-exec.toml"}"]\n'
        '[[case]]\nname = "wrong on purpose"\nprocess = { exe = "/usr/bin/bash" }\n'
        'operation = "exec"\npath = "/tmp/x"\nexpect = "allow"\n',
        "f.fixtures.toml",
    )
    assert main(["policy", "test", str(fixture)]) == 1
    out = capsys.readouterr().out
    assert (
        f"{fixture}:7:10: error: case[0].expect: 'wrong on purpose': expected allow (no rule), "
        "got deny by rule 'tmp-no-exec'"
    ) in out
    assert "0/1 cases pass" in out


def test_bad_fixture_is_located(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    fixture = write(
        '[[case]]\nprocess = { exe = "/x", colour = 1 }\n'
        'operation = "exec"\npath = "/x"\nexpect = "deny"\n'
    )
    assert main(["policy", "test", str(fixture), "--policies", str(POLICIES)]) == 1
    assert (
        f"{fixture}:2:25: error: case[0].process.colour: unknown key 'colour'"
        in capsys.readouterr().out
    )


def test_readme_examples_are_valid_policies() -> None:
    """Every complete policy in policies/README.md parses (snippets starting with name =)."""
    text = (POLICIES / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    complete = [b for b in blocks if b.startswith("name = ")]
    assert len(complete) >= 4
    for block in complete:
        Policy.from_dict(tomllib.loads(block))
