"""``sealtrail report``: a forensic and compliance report built only from verified evidence.

``evidence`` (verify, then hand on only what verified, list the rest) -> ``aggregate``
(counts, timelines, the tables) -> ``charts`` (matplotlib PNGs) and ``compliance`` (what the
journal proves, by control) -> ``render`` (one self-contained, escaped HTML page).
docs/report.md describes the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.collector.config import load_config
from agent.collector.hoststate import enrolled_host
from agent.collector.store import open_store
from agent.journal.keys import PublicKey
from agent.report.aggregate import Aggregate
from agent.report.evidence import from_journal, from_store
from agent.report.render import HostReport, render, when

__all__ = ["collector_report", "journal_report"]


def _window(since: int | None, until: int | None) -> str:
    if since is None and until is None:
        return "the whole journal"
    return f"from {when(since) if since else 'the start'} to {when(until) if until else 'the end'}"


def journal_report(
    directory: Path, genesis: PublicKey, *, since: int | None = None, until: int | None = None
) -> tuple[str, int]:
    """The report of one journal directory, as HTML, and the errors verification found."""
    aggregate = Aggregate(since, until)
    evidence = from_journal(directory, genesis, aggregate)
    title = f"sealtrail report: {evidence.summary.host or directory}"
    page = render([HostReport(evidence, aggregate)], title=title, window=_window(since, until))
    return page, evidence.summary.errors


def collector_report(
    directory: Path,
    hosts: Sequence[str] = (),
    *,
    since: int | None = None,
    until: int | None = None,
) -> tuple[str, int]:
    """The report of hosts in a collector's store (all enrolled ones if ``hosts`` is empty),
    each verified again from its enrolled genesis key; and the errors found, all hosts'."""
    config = load_config(directory.absolute())
    reports: list[HostReport] = []
    with open_store(config.store_url(), quarantine_limit=config.quarantine_limit) as store:
        chosen = [enrolled_host(store, name) for name in hosts] if hosts else store.hosts()
        for host in chosen:
            aggregate = Aggregate(since, until)
            reports.append(HostReport(from_store(store, host, aggregate), aggregate))
    names = ", ".join(r.evidence.summary.host or "?" for r in reports) or "no hosts"
    page = render(reports, title=f"sealtrail report: {names}", window=_window(since, until))
    return page, sum(r.evidence.summary.errors for r in reports)
