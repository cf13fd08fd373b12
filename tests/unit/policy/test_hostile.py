"""Hostile policy input: no file in a policy directory may stop the agent or print a traceback.

The daemon loads its directory with ``check([directory], caps)``; ``policy check`` prints the
same report. Each input here is answered with error findings naming the file (never an
exception), and the valid files of the set are still loaded. The hypothesis tests fuzz file
names, sizes, nesting, encodings and numbers of files and rules.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli import main
from agent.policy.check import Report, _covers, check, check_set
from agent.policy.compile import MAX_RULES, precedence_class
from agent.policy.mechanisms import HostCapabilities
from agent.policy.source import MAX_FILE_BYTES, load_policy_set, shown

from .conftest import REPO

VALID = (
    'name = "{name}"\nmode = "enforce"\n[[rules]]\nid = "{name}-r"\noperation = "exec"\n'
    'action = "deny"\ntargets.paths = ["/tmp/"]\n'
)
CAPS = HostCapabilities(lsm=False, cgroup_sock=True, fanotify=True, send_signal=True)


def valid(name: str = "good") -> bytes:
    return VALID.format(name=name).encode()


def errors_by_file(report: Report) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for finding in report.findings:
        if finding.severity == "error":
            out.setdefault(finding.file, []).append(str(finding))
    return out


def run_cli(*args: str) -> tuple[int, str]:
    """``sealtrail ARGS`` in process: (exit code, stdout + stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue() + err.getvalue()


# ---- each hostile input, found by hand or by the fuzzer ----


def hostile_files(directory: Path) -> dict[str, str]:
    """Write one of each hostile kind; {shown name: expected message}. Before the fix, the
    comment says what each one did to ``check`` (and so to the agent)."""
    expected = {}

    def put(name: bytes, data: bytes, message: str) -> None:
        path = Path(os.fsdecode(bytes(directory) + b"/" + name))
        path.write_bytes(data)
        expected[shown(path)] = message

    # RecursionError from tomllib
    put(b"deep-array.toml", b"a = " + b"[" * 5000 + b"]" * 5000, "nested more than 32 levels")
    put(b"deep-table.toml", b"a = " + b"{b = " * 300 + b"1" + b"}" * 300, "nested more than 32")
    # ValueError: int()'s 4300-digit limit in tomllib, and in the message naming the port
    put(b"long-int.toml", b"a = " + b"7" * 5000, "integer too large")
    put(b"wide-int.toml", valid("w").replace(b"[\"/tmp/\"]", b"[0x" + b"f" * 4000 + b"]"),
        "integer too large")  # fmt: skip
    # accepted: the byte became U+FFFD, so the rule named another path
    put(b"latin1-\xe9.toml", valid("l").replace(b"/tmp/", b"/tmp/\xe9"), "byte 0xe9 is not UTF-8")
    # "Invalid statement", the encoding not named
    put(b"utf16.toml", VALID.format(name="u").encode("utf-16"), "UTF-16 or UTF-32 text")
    # read whole, whatever its size
    put(b"big.toml", b"#" * (MAX_FILE_BYTES + 1), f"larger than {MAX_FILE_BYTES} bytes")
    # no line and column
    put(b"eof.toml", b'name = "p"\nmode = ', ":2:8: error: TOML: Invalid value at the end")
    os.symlink("/dev/zero", directory / "zero.toml")  # MemoryError
    expected[f"{directory}/zero.toml"] = "not a regular file (a character device)"
    os.mkfifo(directory / "fifo.toml")  # blocked for ever
    expected[f"{directory}/fifo.toml"] = "not a regular file (a FIFO)"
    (directory / "dir.toml").mkdir()
    expected[f"{directory}/dir.toml"] = "not a regular file (a directory)"
    os.symlink(directory / "nowhere", directory / "dangling.toml")
    expected[f"{directory}/dangling.toml"] = "cannot read: No such file or directory"
    os.symlink("loop.toml", directory / "loop.toml")
    expected[f"{directory}/loop.toml"] = "cannot read: Too many levels of symbolic links"
    return expected


def check_within(seconds: float, directory: Path) -> Report:
    """The daemon's call, in a thread: fail (instead of hanging) if it blocks, e.g. on a FIFO."""
    result: list[Report] = []
    thread = threading.Thread(target=lambda: result.append(check([directory], CAPS)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"still running after {seconds} s"
    return result[0]


def test_hostile_files_are_findings_and_the_valid_file_still_loads(tmp_path: Path) -> None:
    expected = hostile_files(tmp_path)
    (tmp_path / "good.toml").write_bytes(valid())
    report = check_within(20, tmp_path)
    found = errors_by_file(report)
    assert set(found) == set(expected)
    for name, message in expected.items():
        [line] = found[name]
        assert line.startswith(name) and message in line, line
    assert [s.document.file for s in report.policy_set.sources] == [f"{tmp_path}/good.toml"]


def test_a_file_name_that_is_not_utf8_is_shown_escaped(tmp_path: Path) -> None:
    os.mkdir(bytes(tmp_path) + b"/\xff")
    directory = Path(os.fsdecode(bytes(tmp_path) + b"/\xff"))
    (directory / os.fsdecode(b"\xfe.toml")).write_bytes(valid())
    (directory / os.fsdecode(b"\xfd.toml")).write_bytes(valid().replace(b"/tmp/", b"tmp"))
    report = check([directory], CAPS)
    shown_dir = f"{tmp_path}/\\xff"
    assert [s.document.file for s in report.policy_set.sources] == [f"{shown_dir}/\\xfe.toml"]
    [error] = [str(f) for f in report.findings]
    assert error.startswith(f"{shown_dir}/\\xfd.toml:7:18: error: rules[0].targets.paths[0]")
    code, text = run_cli("policy", "check", "--json", str(directory))
    assert code == 1 and json.loads(text)["files"] == [f"{shown_dir}/\\xfe.toml"]
    code, text = run_cli("policy", "check", "--host", str(directory))
    assert code == 1 and f"{shown_dir}/\\xfd.toml:7:18: error" in text
    missing = Path(os.fsdecode(bytes(tmp_path) + b"/\xfc"))
    assert run_cli("policy", "check", str(missing)) == (
        2,
        f"sealtrail: error: {tmp_path}/\\xfc: no such file or directory\n",
    )


def test_an_empty_directory_and_a_path_through_a_file(tmp_path: Path) -> None:
    [finding] = check([tmp_path]).findings
    assert (finding.file, finding.message) == (str(tmp_path), "no *.toml policy files")
    (tmp_path / "x.toml").write_bytes(valid())
    code, text = run_cli("policy", "check", f"{tmp_path}/x.toml/y")
    assert code == 2 and "Not a directory" in text


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf" + valid())
    report = check([tmp_path])
    assert report.ok and report.compiled is not None


def test_over_the_rule_limit_is_one_error_with_other_errors_too(tmp_path: Path) -> None:
    """5,000 rules: the shadow analysis is skipped (it took ~40 s), the limit is reported even
    when another file has an error (it was not: the compiler never ran)."""
    rules = "".join(
        f'[[rules]]\nid = "r{n}"\noperation = "open"\ntargets.paths = ["/srv/{n}/"]\n'
        f'action = "deny"\nsubjects.uid = [{n}]\n'
        for n in range(5000)
    )
    (tmp_path / "a.toml").write_text('name = "big"\nmode = "enforce"\n' + rules)
    (tmp_path / "b.toml").write_text("oops")
    found = errors_by_file(check([tmp_path]))
    assert set(found) == {f"{tmp_path}/a.toml", f"{tmp_path}/b.toml"}
    [limit] = found[f"{tmp_path}/a.toml"]
    assert f"rules[{MAX_RULES}] (rule 'r{MAX_RULES}'): more than {MAX_RULES} rules" in limit


# ---- the shadow index finds what comparing every pair finds ----

PATHS = st.sampled_from(["/", "/etc/", "/etc/shadow", "/etc/sh*", "/etc/s*", "/tmp/", "/tmp/x"])
ADDRESSES = st.sampled_from(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "::/0", "fd00::/8"])
PORTS = st.sampled_from([22, 80, "1-1023", "0-65535", "80-90", 443])


@st.composite
def rule_text(draw: st.DrawFn) -> str:
    """One [[rules]] table without its id, from a few overlapping values."""
    operation = draw(st.sampled_from(["open", "exec", "connect"]))
    lines = [f'operation = "{operation}"']
    lines.append(f'action = "{draw(st.sampled_from(["allow", "audit", "deny", "kill"]))}"')

    def some(values: st.SearchStrategy[object]) -> str:
        return json.dumps(draw(st.lists(values, min_size=1, max_size=3, unique=True)))

    if operation == "connect":
        lines.append(f"targets.addresses = {some(ADDRESSES)}")
        if draw(st.booleans()):
            lines.append(f"targets.ports = {some(PORTS)}")
    else:
        lines.append(f"targets.paths = {some(PATHS)}")
    if operation == "open" and draw(st.booleans()):
        lines.append(f"access = {some(st.sampled_from(['read', 'write', 'create']))}")
    if draw(st.booleans()):
        lines.append(f"subjects.uid = {some(st.integers(0, 3))}")
    if draw(st.booleans()):
        lines.append(f"subjects.exe = {some(PATHS)}")
    if draw(st.booleans()):
        lines.append(f"subjects.except.gid = {some(st.integers(0, 2))}")
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["enforce", "monitor"]), st.lists(rule_text(), min_size=1, max_size=30)
        ),
        min_size=1,
        max_size=3,
    )
)
def test_shadow_index_agrees_with_every_pair(files: list[tuple[str, list[str]]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        for number, (mode, rules) in enumerate(files):
            text = f'name = "p{number}"\nmode = "{mode}"\n'
            text += "".join(f'[[rules]]\nid = "r{number}-{n}"\n{r}' for n, r in enumerate(rules))
            Path(directory, f"{number}.toml").write_text(text)
        policy_set, findings = load_policy_set([Path(directory)])
        assert not findings
        got = {(f.file, f.rule_id, f.severity) for f in check_set(policy_set)}
    ranked = sorted(
        ((precedence_class(s.policy.mode, r.action), n, s, r)
         for n, (s, _, r) in enumerate(policy_set.rules())),
        key=lambda entry: entry[:2],
    )  # fmt: skip
    expected = set()
    for position, (_, _, source, rule) in enumerate(ranked):
        for _, _, first_source, first in ranked[:position]:
            if first.operation == rule.operation and _covers(first, rule):
                same = (first.action, first_source.policy.mode) == (rule.action, source.policy.mode)
                expected.add((source.document.file, rule.id, "warning" if same else "error"))
                break
    assert got == expected


# ---- fuzzing the whole path: names, contents, encodings, nesting, numbers of files ----

NAMES = st.binary(min_size=1, max_size=60).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)
WORDS = st.sampled_from(
    ["name", "mode", "rules", "id", "operation", "targets", "paths", "action", "subjects",
     "except", "exe", "uid", "access", "ports", "addresses", "protocol", "fallback", "x"]
)  # fmt: skip
SCALARS = st.one_of(
    st.sampled_from(
        ['"enforce"', '"deny"', '"exec"', '"open"', '"/tmp/"', '"/etc/shadow"', '"10.0.0.0/8"',
         '"1-1023"', "true", "1979-05-27", "inf", "nan", "0x" + "f" * 20, "-1", "4294967295",
         "9" * 5000, "0x" + "f" * 4000]
    ),
    st.integers().map(str),
    st.text(max_size=12).map(json.dumps),
)  # fmt: skip


def values(depth: int) -> st.SearchStrategy[str]:
    if depth <= 0:
        return SCALARS
    inner = values(depth - 1)
    return st.one_of(
        SCALARS,
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(st.tuples(WORDS, inner), max_size=3).map(
            lambda kv: "{" + ", ".join(f"{k} = {v}" for k, v in kv) + "}"
        ),
    )


LINES = st.one_of(
    st.tuples(st.lists(WORDS, min_size=1, max_size=3), values(3)).map(
        lambda kv: f"{'.'.join(kv[0])} = {kv[1]}"
    ),
    st.sampled_from(["[[rules]]", "[rules.targets]", "[rules.subjects.except]", "[x]", "[[x]]"]),
)


@st.composite
def tomlish(draw: st.DrawFn) -> str:
    """Text that is often a policy, sometimes nearly one."""
    head = 'name = "p"\nmode = "enforce"\n' if draw(st.booleans()) else ""
    rule = "[[rules]]" + VALID.split("[[rules]]")[1]
    rules = "".join(rule.replace("{name}-r", f"r{n}") for n in range(draw(st.integers(0, 40))))
    return head + rules + "\n".join(draw(st.lists(LINES, max_size=8)))


def nested(depth: int, opener: str, closer: str) -> bytes:
    return ("a = " + opener * depth + "1" * (closer == "}") + closer * depth).encode()


CONTENTS = st.one_of(
    tomlish().map(str.encode),
    st.tuples(
        tomlish(), st.sampled_from(["utf-8-sig", "utf-16", "utf-16-be", "utf-32", "cp1252"])
    ).map(lambda t: t[0].encode(t[1], "replace")),
    st.binary(max_size=300),
    st.tuples(st.integers(1, 3000), st.sampled_from([("[", "]"), ("{b = ", "}")])).map(
        lambda t: nested(t[0], *t[1])
    ),
    st.tuples(tomlish(), st.integers(0, 400), st.binary(max_size=8)).map(
        lambda t: t[0].encode()[: t[1]] + t[2] + t[0].encode()[t[1] :]
    ),
)


@contextlib.contextmanager
def policy_directory(files: list[tuple[bytes, bytes]]) -> Iterator[tuple[Path, set[str]]]:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        shown_names = set()
        for file_name, data in files:
            path = Path(os.fsdecode(bytes(directory) + b"/" + file_name + b".toml"))
            path.write_bytes(data)
            shown_names.add(shown(path))
        yield directory, shown_names


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(NAMES, CONTENTS), max_size=5, unique_by=lambda f: f[0]))
def test_fuzz_check_and_cli_never_raise(files: list[tuple[bytes, bytes]]) -> None:
    with policy_directory(files) as (directory, names):
        daemons, clis = check([directory], CAPS), check([directory])
        for report in (daemons, clis):
            for finding in report.findings:
                assert finding.file in names or (not files and finding.file == str(directory))
                str(finding).encode("utf-8")  # printable as it is
            assert not report.ok or report.compiled is not None
        code, text = run_cli("policy", "check", str(directory))
        assert code == (0 if clis.ok else 1) and "Traceback" not in text
        code, text = run_cli("policy", "check", "--json", str(directory))
        assert code == (0 if clis.ok else 1) and json.loads(text)["ok"] == clis.ok


def test_subprocess_hostile_directory_no_traceback(tmp_path: Path) -> None:
    """The real command line, output to a pipe (strict UTF-8 stdout): exit 1, every file named."""
    expected = hostile_files(tmp_path)
    (tmp_path / os.fsdecode(b"\xff.toml")).write_bytes(valid())
    for extra in (["--host"], []):
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli", "policy", "check", *extra, str(tmp_path)],
            capture_output=True,
            timeout=60,
            cwd=REPO,
            env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
        )
        text = (done.stdout + done.stderr).decode()
        assert done.returncode == 1 and "Traceback" not in text, text
        assert [name for name in expected if name not in text] == []
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "policy", "check", "--json", str(tmp_path)],
        capture_output=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 1 and not done.stderr
    assert f"{tmp_path}/\\xff.toml" in json.loads(done.stdout)["files"]


@pytest.mark.parametrize("depth", [31, 32, 400, 600])
def test_nesting_limit(tmp_path: Path, depth: int) -> None:
    (tmp_path / "n.toml").write_bytes(nested(depth, "[", "]"))
    [finding] = check([tmp_path]).findings
    assert ("nested more than 32" in finding.message) == (depth >= 32)
