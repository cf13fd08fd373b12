"""``sealtrail report`` in a real headless browser (Debian's chromium, the Makefile installs
it): the page renders, its three charts are there and decode as images, the numbers in the
rendered DOM equal the journal's, and the journal's hostile paths and binaries run nothing and
appear only as text."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from agent.cli import main
from tests.agentproc import journal_records
from tests.unit.test_report import Numbers, write_journal

CHROMIUM = shutil.which("chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run")  # fmt: skip


def chromium(tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None, "chromium is not installed (make bootstrap installs it)"
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"  # a fresh one each run
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=120, check=True)  # fmt: skip


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("browser")
    j = write_journal(root)
    out = root / "report.html"
    assert main(["report", "--journal", str(j.dir), "--key", str(j.keys / "journal.pub"),
                 "-o", str(out)]) == 0  # fmt: skip
    return out, j.dir


def test_the_dom_holds_the_journals_numbers_and_nothing_ran(
    page: tuple[Path, Path], tmp_path: Path
) -> None:
    out, journal = page
    dom = chromium(tmp_path, out.as_uri(), "--dump-dom").stdout
    assert dom.startswith("<!DOCTYPE html>") or "<html" in dom[:200]
    records = journal_records(journal)
    n = Numbers(dom)
    assert n.found["status"] == ["verified"]
    assert n.one("verified") == len(records) and n.one("excluded") == 0
    kinds = Counter(r["kind"] for r in records if r["type"] == "event")
    actions = Counter(r["action"] for r in records if r["type"] == "verdict")
    for kind, count in kinds.items():
        assert n.one(f"event-{kind}") == count
    for action, count in actions.items():
        assert n.one(f"verdict-{action}") == count
    assert n.one("lost-events") == 9
    # the hostile exe would set the title, the hostile path add an <img onerror>: neither did
    assert "<title>sealtrail report: web-01</title>" in dom and "owned" not in dom.split(
        "<body>", 1)[0]  # fmt: skip
    assert "<script" not in dom
    assert dom.count("<img ") == 3 and "onerror=" not in dom.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;document.title='owned'&lt;/script&gt;" in dom


def test_the_page_renders_with_its_charts(page: tuple[Path, Path], tmp_path: Path) -> None:
    out, _ = page
    shot = tmp_path / "shot.png"
    chromium(tmp_path, out.as_uri(), f"--screenshot={shot}", "--window-size=1280,2400")
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2400)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, tables and charts, not blank
    dom = chromium(tmp_path, out.as_uri(), "--dump-dom").stdout
    charts = dom.split('src="data:image/png;base64,')[1:]
    assert len(charts) == 3  # events and verdicts over time, denials by rule
    for chart in charts:
        png = Image.open(io.BytesIO(base64.b64decode(chart.split('"', 1)[0])))
        assert png.format == "PNG" and png.size[0] > 500 and png.size[1] > 100
