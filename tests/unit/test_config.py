"""``agent.toml``: defaults, every key read back, the flags above the file, errors that name the
file, the line and the key (real files)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from agent import paths
from agent.config import FLAGS, AgentSettings, ForwardSettings, load_settings
from agent.errors import ConfigError, UsageError
from agent.tomlconfig import quote, toml_key
from tests.conftest import REPO

FULL = """\
policies = "/srv/policies"
journal = "/srv/journal"
keys = "/srv/keys"
run_dir = "/srv/run"
cgroup = "/sys/fs/cgroup/web"
record = ["exec", "connect"]
ringbuf_size = 1048576
epoch_seconds = 600
heartbeat_seconds = 2.5

[forward]
url = "https://collector.example:8443"
tls = "/etc/sealtrail/forward"
wait_seconds = 1
rate = 0
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_no_file_is_the_defaults_of_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paths, "DEFAULT_AGENT_CONFIG", tmp_path / "absent" / "agent.toml")
    settings = load_settings(None)
    assert settings == AgentSettings()
    assert (settings.policies, settings.journal, settings.keys, settings.run_dir) == (
        Path("/etc/sealtrail/policies"),
        Path("/var/lib/sealtrail/journal"),
        Path("/etc/sealtrail/keys"),
        Path("/run/sealtrail"),
    )
    assert settings.cgroup is None and settings.forward.config() is None
    assert (settings.ringbuf_size, settings.epoch_seconds, settings.heartbeat_seconds) == (
        8 << 20,
        3600,
        10,
    )
    assert settings.record == {"exec", "exit", "connect", "bind", "listen", "accept"}
    assert (settings.forward.wait_seconds, settings.forward.rate) == (5, 200_000)


def test_a_file_named_on_the_command_line_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent.toml does not exist \(--config FILE\)"):
        load_settings(tmp_path / "absent.toml")


def test_every_key_is_read(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL))
    assert settings == AgentSettings(
        policies=Path("/srv/policies"),
        journal=Path("/srv/journal"),
        keys=Path("/srv/keys"),
        run_dir=Path("/srv/run"),
        cgroup=Path("/sys/fs/cgroup/web"),
        record=frozenset({"exec", "connect"}),
        ringbuf_size=1 << 20,
        epoch_seconds=600,
        heartbeat_seconds=2.5,
        forward=ForwardSettings(
            url="https://collector.example:8443",
            tls=Path("/etc/sealtrail/forward"),
            wait_seconds=1,
            rate=0,
        ),
    )
    forward = settings.forward.config()
    assert forward is not None and forward.url == "https://collector.example:8443"
    assert (forward.pacing.rate, forward.pacing.stop_wait) == (0, 1)


def test_every_key_has_a_flag_and_every_flag_a_key() -> None:
    keys = {f for f in AgentSettings.__dataclass_fields__ if f != "forward"}
    keys |= {f"forward.{f}" for f in ForwardSettings.__dataclass_fields__}
    assert set(FLAGS) == keys


@pytest.mark.parametrize("settings", [AgentSettings(), "FULL"])
def test_to_toml_reads_back_equal(tmp_path: Path, settings: AgentSettings | str) -> None:
    if isinstance(settings, str):
        settings = load_settings(write(tmp_path, FULL))
    assert load_settings(write(tmp_path, settings.to_toml())) == settings


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    text = 'journal = "journal"\nkeys = "../keys"\n[forward]\nurl = "https://c"\ntls = "fwd"\n'
    settings = load_settings(write(tmp_path, text))
    assert settings.journal == tmp_path / "journal" and settings.keys == tmp_path / "../keys"
    assert settings.forward.tls == tmp_path / "fwd"


def test_flags_win_over_the_file_and_the_file_over_the_defaults(tmp_path: Path) -> None:
    from_file = load_settings(write(tmp_path, "heartbeat_seconds = 3\n[forward]\nrate = 7\n"))
    settings = from_file.override({"journal": Path("/j"), "forward.rate": 9})
    assert settings.journal == Path("/j") and settings.forward.rate == 9  # the flags
    assert settings.heartbeat_seconds == 3  # the file, where no flag says otherwise
    assert settings.keys == paths.DEFAULT_KEYS_DIR  # the default, where neither does
    assert from_file.override({}) == from_file


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"heartbeat_seconds": 0.0}, r"^--heartbeat: must be a number of at least 0.001, not 0"),
        ({"ringbuf_size": 5000}, r"^--ringbuf-size: ring buffer size 5000 must be a power of two"),
        ({"record": frozenset({"exec", "bogus"})}, r"^--record: unknown event kind\(s\) bogus"),
        ({"forward.url": "https://c"}, r"^--forward: needs the enrollment bundle too"),
        ({"forward.tls": Path("/b")}, r"^--forward-tls: needs the collector's address too"),
        ({"forward.url": "http://c", "forward.tls": Path("/b")}, r"^--forward: .*https://HOST"),
        ({"forward.rate": -1}, r"^--forward-rate: must be an integer of at least 0, not -1"),
        ({"forward.wait_seconds": -1.0}, r"^--forward-wait: must be a number of at least 0"),
    ],
)
def test_a_bad_flag_is_named(flags: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        AgentSettings().override(flags)


def test_a_flag_completes_what_the_file_has_only_when_the_file_is_whole(tmp_path: Path) -> None:
    with_bundle = load_settings(write(tmp_path, '[forward]\nurl = "https://c"\ntls = "/b"\n'))
    assert with_bundle.override({"forward.url": "https://d"}).forward.url == "https://d"
    with pytest.raises(ConfigError, match=r"line 2: \[forward\] url: needs the enrollment"):
        load_settings(write(tmp_path, '[forward]\nurl = "https://c"\n'))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('journal = "/j"\nheartbeat = 3\n', r"line 2: heartbeat: is not a known key \(known here"),
        ("[forward]\nwait = 1\n", r"line 2: \[forward\] wait: is not a known key"),
        ("[pins]\n", r"line 1: pins: is not a known key"),
        ("forward = 3\n", r"line 1: forward: must be a table"),
        ('\n\nheartbeat_seconds = "10"\n', r"line 3: heartbeat_seconds: must be a number"),
        ("heartbeat_seconds = 0\n", r"line 1: heartbeat_seconds: must be a number of at least"),
        ("epoch_seconds = true\n", r"line 1: epoch_seconds: must be a number"),
        ("ringbuf_size = 4096.0\n", r"line 1: ringbuf_size: must be an integer of at least 0"),
        ("ringbuf_size = 12288\n", r"line 1: ringbuf_size: .* must be a power of two >= 4096"),
        ('record = "exec,connect"\n', r"line 1: record: must be a list of event kinds"),
        (
            'record = [\n  "exec",\n  "bogus",\n]\n',
            r"line 1: record: unknown event kind\(s\) bogus",
        ),
        ("journal = 3\n", r"line 1: journal: must be a path \(a non-empty string\), not 3"),
        ('keys = ""\n', r"line 1: keys: must be a path"),
        ('[forward]\ntls = "/b"\n', r"line 2: \[forward\] tls: needs the collector's address"),
        ('[forward]\nurl = "ftp://c"\ntls = "/b"\n', r"line 2: \[forward\] url: .*https://HOST"),
        ('[forward]\nurl = "https://c"\ntls = "/b"\nrate = 1.5\n', r"line 4: \[forward\] rate"),
        ('policies = "/p"\nforward.rate = -1\n', r"line 2: \[forward\] rate: must be an int"),
        ('forward = { wait_seconds = "x" }\n', r"line 1: \[forward\] wait_seconds: must be"),
        ('journal = "/j"\nkeys = \n', r"line 2, column 8: TOML: Invalid value"),
        ('journal = "/j"\njournal = "/k"\n', r"line 2, column 15: TOML: Cannot overwrite a value"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


def test_a_file_that_is_not_utf8_is_an_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b'journal = "/j"\nkeys = "\xff"\n')
    with pytest.raises(ConfigError, match=r"line 2, column 9: byte 0xff is not UTF-8"):
        load_settings(path)


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"cannot read {tmp_path}: Is a directory"):
        load_settings(tmp_path)


def documented(heading: str) -> tuple[str, list[str]]:
    """The example file and the table rows of a section of docs/configuration.md."""
    text = (REPO / "docs" / "configuration.md").read_text()
    section = text.split(f"\n## `{heading}`\n", 1)[1].split("\n## ", 1)[0]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    return example, [line for line in section.splitlines() if line.startswith("| `")]


def test_the_documented_example_is_the_defaults(tmp_path: Path) -> None:
    example, _ = documented("agent.toml")
    assert load_settings(write(tmp_path, example)) == AgentSettings()


def test_every_key_is_documented_with_its_default_and_flag() -> None:
    _, rows = documented("agent.toml")
    defaults = tomllib.loads(AgentSettings().to_toml())
    for key, flag in FLAGS.items():
        (row,) = [r for r in rows if r.startswith(f"| `{toml_key(key)}` |")]
        assert f"| `{flag}" in row, key
        table, _, name = key.rpartition(".")
        default = (defaults[table] if table else defaults).get(name)
        if isinstance(default, list):
            default = f"[{', '.join(quote(item) for item in default)}]"
        elif isinstance(default, bool):
            default = "true" if default else "false"
        assert ("| not set" if default is None else f"| `{default}`") in row, key
