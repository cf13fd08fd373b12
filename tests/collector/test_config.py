"""``collector.toml``: written, read back, every error naming file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.collector.config import CollectorConfig, Files, Timeouts, load_config, make_config
from agent.collector.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "collector.toml").write_text(text)
    return tmp_path


def test_defaults_round_trip(tmp_path: Path) -> None:
    config = make_config(tmp_path, "coll-1")
    write(tmp_path, config.to_toml())
    assert load_config(tmp_path) == config
    assert (config.heartbeat_seconds, config.silent_after, config.silent_seconds) == (10, 3, 30)
    assert config.listen_address() == ("0.0.0.0", 8443)
    assert config.store_url() == str(tmp_path / "store.sqlite")
    assert config.path(config.files.server_key) == tmp_path / "server.key"


def test_every_value_round_trips(tmp_path: Path) -> None:
    config = CollectorConfig(
        directory=tmp_path,
        name="coll-2",
        listen="[::1]:9443",
        store="postgresql://collector@db.example/sealtrail",
        heartbeat_seconds=2.5,
        silent_after=5,
        body_limit=1 << 20,
        quarantine_limit=0,
        timeouts=Timeouts(handshake_seconds=1, request_seconds=2.5, idle_seconds=3),
        files=Files(
            ca_cert="/etc/pki/ca.pem", ca_key=None, server_cert="s.pem", server_key="s.key"
        ),
    )
    write(tmp_path, config.to_toml())
    assert load_config(tmp_path) == config
    assert config.listen_address() == ("::1", 9443)
    assert config.store_url() == "postgresql://collector@db.example/sealtrail"
    assert config.path("/etc/pki/ca.pem") == Path("/etc/pki/ca.pem")


def test_a_minimal_file_takes_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'name = "c"\n'))
    assert config == make_config(tmp_path, "c")
    operator = load_config(write(tmp_path, 'name = "c"\n[files]\nca_cert = "/x/ca.crt"\n'))
    assert operator.files.ca_key is None  # another CA: no CA key unless named


def test_overrides_are_checked_like_the_file(tmp_path: Path) -> None:
    config = make_config(tmp_path, "coll-1")
    assert config.override(listen="127.0.0.1:1").listen_address() == ("127.0.0.1", 1)
    with pytest.raises(ConfigError, match=r"^listen: must be HOST:PORT"):
        config.override(listen="127.0.0.1")
    with pytest.raises(ConfigError, match=r"^store: .*unknown scheme"):
        config.override(store="mysql://x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "c"\nlisten = \n', r"collector.toml: line 2, column 10: TOML: Invalid value"),
        ('name = "c"\n\n[timeouts]\nrequest_seconds = "x"\n', r"line 4: \[timeouts\] request_"),
        ('name = "c"\n[timeouts]\nrequest_seconds = 0\n', r"must be a number of at least 0.001"),
        ('name = "c"\nlisten = "[::1]:99999"\n', r"line 2: listen: must be HOST:PORT"),
        ('name = "c"\nport = 1\n', r"line 2: port: is not a known key \(known here: files,"),
        ('name = "c"\n[limits]\nbody = 1\n', r"line 3: \[limits\] body: is not a known key"),
        ('name = "c"\n[heartbeat]\nsilent_after = 0\n', r"\[heartbeat\] silent_after: must be"),
        ('name = "c"\n[heartbeat]\nseconds = true\n', r"\[heartbeat\] seconds: must be a number"),
        ('name = "c"\nheartbeat = 3\n', r"line 2: heartbeat: must be a table"),
        ('listen = "x:1"\n', r"collector.toml: name: is missing"),
        ('name = "no spaces"\n', r"line 1: name: host name 'no spaces' is not usable"),
        ('name = "c"\nstore = "sqlite://rel"\n', r"line 2: store: .*absolute path"),
        ('name = "c"\n[files]\nserver_key = ""\n', r"line 3: \[files\] server_key: must be a"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write(tmp_path, text))
    assert str(info.value).startswith(str(tmp_path / "collector.toml"))
    assert "\n" not in str(info.value)


def test_a_missing_file_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist: is .* a collector directory"):
        load_config(tmp_path)


def test_strings_are_quoted_for_toml(tmp_path: Path) -> None:
    config = make_config(tmp_path, "c", store='/odd "path"\\with ü')
    write(tmp_path, config.to_toml())
    assert load_config(tmp_path).store == '/odd "path"\\with ü'


def test_the_documented_file_is_what_init_writes(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    section = doc.split("\n## `collector.toml`\n", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    assert load_config(write(tmp_path, example)) == make_config(tmp_path, "coll-1")
