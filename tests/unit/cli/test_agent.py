"""``sealtrail agent``: its configuration file under its flags, and refusals as one line and an
exit status, never a traceback (real files and real processes; no root needed)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.cli import main
from agent.journal.keys import KeyStore
from tests.conftest import REPO


def sealtrail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def print_config(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["agent", *args, "--print-config"]) == 0
    return capsys.readouterr().out


def printed(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    return tomllib.loads(print_config(capsys, *args))


def test_a_broken_file_stops_the_agent_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('journal = "/var/lib/sealtrail/journal"\n\nheartbeat_seconds = "often"\n')
    run = sealtrail("agent", "--config", str(config), "--journal", str(tmp_path / "journal"))
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr == (
        f"sealtrail: error: {config}: line 3: heartbeat_seconds: "
        "must be a number of at least 0.001, not 'often'\n"
    )


def test_a_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[forward]\nurl = "https://c\n')
    run = sealtrail("agent", "--config", str(config), "--print-config")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr == (
        f"sealtrail: error: {config}: line 2, column 17: TOML: Illegal character '\\n'\n"
    )


def test_a_config_file_named_but_missing_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["agent", "--config", str(tmp_path / "nope.toml"), "--print-config"]) == 1
    assert "nope.toml does not exist (--config FILE)" in capsys.readouterr().err


def test_print_config_is_the_file_under_the_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'keys = "keys"\nheartbeat_seconds = 3\nrecord = ["exec"]\n'
        '[forward]\nurl = "https://c:1"\ntls = "/bundle"\nrate = 10\n'
    )
    doc = printed(capsys, "--config", str(config), "--heartbeat", "7", "--forward-rate", "20")
    assert doc["keys"] == str(tmp_path / "keys")  # the file
    assert doc["heartbeat_seconds"] == 7 and doc["record"] == ["exec"]  # a flag, the file
    assert doc["journal"] == "/var/lib/sealtrail/journal"  # the default
    assert doc["forward"] == {"url": "https://c:1", "tls": "/bundle", "wait_seconds": 5, "rate": 20}
    assert "cgroup" not in doc
    # what it prints is a configuration file that gives the same
    text = print_config(capsys, "--config", str(config))
    (tmp_path / "printed.toml").write_text(text)
    assert print_config(capsys, "--config", str(tmp_path / "printed.toml")) == text


def test_record_flag_is_a_comma_list(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("")
    doc = printed(capsys, "--config", str(config), "--record", "connect, exec")
    assert doc["record"] == ["connect", "exec"]
    assert printed(capsys, "--config", str(config), "--record", "")["record"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--heartbeat", "0"], "--heartbeat: must be a number of at least 0.001, not 0.0"),
        (["--record", "exec,nope"], "--record: unknown event kind(s) nope"),
        (["--forward", "https://c"], "--forward: needs the enrollment bundle too"),
        (["--forward-tls", "/b"], "--forward-tls: needs the collector's address too"),
    ],
)
def test_a_bad_flag_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("")
    assert main(["agent", "--config", str(config), *args, "--print-config"]) == 2
    assert message in capsys.readouterr().err


def test_a_private_key_others_can_read_stops_the_agent(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    KeyStore(keys).init()
    (key,) = keys.glob("epoch-*.key")
    key.chmod(0o644)
    config = tmp_path / "agent.toml"
    config.write_text(
        'journal = "journal"\nkeys = "keys"\npolicies = "policies"\nrun_dir = "run"\n'
    )
    run = sealtrail("agent", "--config", str(config))
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"sealtrail: error: private key {key} has mode 0644: " in run.stderr
    assert run.stderr.endswith(f"(chmod 600 {key})\n")
