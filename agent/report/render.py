"""The report as one self-contained HTML page: no script, no external resource, the charts as
embedded PNGs. Every text that comes from a journal (paths, binaries, host names, rule ids,
findings that quote records) is escaped where it is written into the page: ``_e`` is the one
way text gets in, and markup is only ever this module's own constants.

Numbers a reader (or the browser test) may check carry ``data-n="NAME"`` attributes.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from agent import __version__
from agent.report import charts
from agent.report.aggregate import DENIALS, Aggregate, Table
from agent.report.compliance import ATTRIBUTES, CONTROLS
from agent.report.evidence import Evidence

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{background:#e6f4e6;border:2px solid #3a3;padding:.6em 1em}
.bad{background:#fbe9e9;border:2px solid #c33;padding:.6em 1em}
code,.mono{font-family:ui-monospace,monospace;font-size:.9em;word-break:break-all}
img{max-width:100%} .muted{color:#666}
"""


def _e(value: object) -> str:
    """Text into the page: every ``& < > " '`` escaped."""
    return html.escape(str(value), quote=True)


def when(ns: int | None) -> str:
    if ns is None:
        return ""
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _num(name: str, value: int) -> str:
    return f'<span data-n="{_e(name)}">{value}</span>'


def _table(head: Sequence[str], rows: Iterable[Sequence[object]], numeric: int = 0) -> str:
    """A table ("None." without rows); the last ``numeric`` columns right-aligned. Every cell
    escaped."""
    rows = list(rows)
    if not rows:
        return "<p>None.</p>"
    out = ["<table><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr>"]
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            cls = ' class="n"' if i >= len(row) - numeric else ""
            out.append(f"<td{cls}>{_e(cell)}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _img(uri: str | None, alt: str) -> str:
    if uri is None:
        return f'<p class="muted">{_e(alt)}: nothing in this period.</p>'
    return f'<p><img class="chart" alt="{_e(alt)}" src="{uri}"></p>'


def _rows_note(table: Table) -> str:
    if table.total > len(table.rows):
        return f'<p class="muted">{table.total - len(table.rows)} more rows not listed.</p>'
    return ""


@dataclass
class HostReport:
    evidence: Evidence
    aggregate: Aggregate


def render(hosts: Sequence[HostReport], *, title: str, window: str) -> str:
    ok = all(h.evidence.summary.ok for h in hosts)
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">Generated {_e(when(int(datetime.now(UTC).timestamp() * 1e9)))} by '
        f"sealtrail {_e(__version__)}; period: {_e(window)}.</p>",
        f'<div class="{"ok" if ok else "bad"}" id="verdict"><strong>Built only from records '
        "that verified.</strong> Every number, chart and table below counts only records whose "
        "hash chain and signed seal verified against the genesis public key; every record that "
        "did not is listed under <em>Records left out</em>. "
        + (
            "Verification found no errors."
            if ok
            else "<strong>Verification found errors: "
            "see the findings and the records left out.</strong>"
        )
        + "</div>",
    ]
    for host in hosts:
        body.extend(_host(host))
    body.append(_compliance())
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def _host(host: HostReport) -> list[str]:
    ev, agg = host.evidence, host.aggregate
    s = ev.summary
    name = s.host or "?"
    out = [f"<h2>Host {_e(name)}</h2>", f'<p class="muted">Source: {_e(ev.source)}</p>']
    out.append("<h3>Verification</h3>")
    seal = ev.seal
    state = "verified" if s.ok else "FAILED"
    out.append(
        f'<p>Journal verification: <strong data-n="status">{state}</strong>: '
        f"{_num('records', s.size)} records, {_num('seals', s.seals)} valid seals, "
        f"{_num('rotations', s.rotations)} key rotations, {_num('errors', s.errors)} errors, "
        f"{_num('recoveries', s.recoveries)} unclean stops recovered; "
        f"{'ends with the agent stop record and final seal' if s.clean_end else 'no stop record and final seal at the end (cut, crash, or the agent still runs)'}. "  # noqa: E501
        f"Records that verified: {_num('verified', ev.verified)}; left out: "
        f"{_num('excluded', ev.excluded_count)}.</p>"
    )
    if seal is not None:
        out.append(
            _table(
                ("checkpoint", "value"),
                (
                    ("tree size (records covered)", seal.size),
                    ("Merkle root", seal.root),
                    ("seal record", seal.seq),
                    ("signed at", when(seal.ts)),
                    ("signing key id", seal.key_id),
                ),
            )
        )
    else:
        out.append('<p class="bad">No seal verified: nothing in this journal is proven.</p>')
    chain = [("genesis", "", ev.genesis_key_id)]
    chain += [
        (f"rotation at seq {r.seq}", when(r.ts), f"{r.old_key_id} \u2192 {r.new_key_id}")
        for r in ev.rotations
    ]
    out.append("<h4>Key chain</h4>" + _table(("step", "time", "key id"), chain))
    out.append("<h4>Findings of journal verify</h4>")
    if ev.findings:
        out.append(
            _table(
                ("severity", "where", "finding"),
                (
                    (f.severity, _where(f.seq, f.seq_end, f.segment, f.offset), f.message)
                    for f in ev.findings
                ),
            )
        )
    else:
        out.append("<p>None.</p>")
    out.extend(_excluded(ev))
    out.extend(_activity(agg))
    return out


def _where(seq: int | None, end: int | None, segment: str | None, offset: int | None) -> str:
    where = (
        "journal"
        if seq is None
        else f"record {seq}"
        if end in (None, seq)
        else f"records {seq}\u2013{end}"
    )
    if segment is not None:
        where += f" in {segment}" + (f" at byte {offset}" if offset is not None else "")
    return where


def _excluded(ev: Evidence) -> list[str]:
    out = [f'<h3 id="excluded">Records left out ({_num("excluded-count", ev.excluded_count)})</h3>']
    if not ev.excluded_count:
        out.append("<p>None: every record verified.</p>")
        return out
    ranges = ", ".join(f"{a}" if a == b else f"{a}\u2013{b}" for a, b in ev.excluded_ranges)
    out.append(
        f'<p>Seqs: <span class="mono">{_e(ranges or "none with a seq")}</span>. '
        "Their content is not used anywhere in this report.</p>"
    )
    out.append(
        _table(
            ("seq", "type (as written, unverified)", "where", "why"),
            (
                (x.seq if x.seq is not None else "", x.type or "", x.where, x.reason)
                for x in ev.excluded
            ),
        )
    )
    if ev.excluded_count > len(ev.excluded):
        out.append(
            f"<p>{ev.excluded_count - len(ev.excluded)} more not listed one by one "
            "(their seqs are in the ranges above).</p>"
        )
    return out


def _activity(agg: Aggregate) -> list[str]:
    start, end = agg.first_ts, agg.last_ts
    out = ["<h3>Activity</h3>"]
    if start is None or end is None:
        out.append("<p>No verified record in this period.</p>")
        return out
    out.append(
        f"<p>Verified records in the period: {_num('period-records', agg.records)}, from "
        f"{_e(when(start))} to {_e(when(end))}.</p>"
    )
    out.append(_table(("record type", "records"), sorted(agg.types.items()), numeric=1))
    out.append("<h4>Events by kind</h4>" + _counts("event", agg.kinds.items()))
    out.append("<h4>Verdicts by action</h4>" + _counts("verdict", agg.actions.items()))
    out.append(
        _img(charts.timeline(agg.event_times, "Events over time", start, end), "events over time")
    )
    out.append(
        _img(
            charts.timeline(agg.verdict_times, "Verdicts over time", start, end),
            "verdicts over time",
        )
    )
    out.append("<h3>Denials by rule</h3>")
    by_rule: dict[str, dict[str, int]] = {}
    for (rule, action), n in agg.denials.items():
        by_rule.setdefault(rule, {})[action] = n
    if by_rule:
        totals = {rule: sum(v.values()) for rule, v in by_rule.items()}
        out.append(
            _img(
                charts.bars(totals, "Denials by rule (deny, kill, would_deny, would_kill)"),
                "denials by rule",
            )
        )
        out.append(
            _table(
                ("rule", *DENIALS, "total"),
                (
                    (rule, *(by_rule[rule].get(a, 0) for a in DENIALS), totals[rule])
                    for rule in sorted(by_rule, key=lambda r: (-totals[r], r))
                ),
                numeric=5,
            )
        )
        out.append(
            "<h4>Latest denials</h4>"
            + _table(
                ("time", "rule", "action", "mechanism", "pid", "uid", "binary", "object"),
                ((when(r.ts), *r.cells) for r in reversed(agg.recent_denials)),
            )
        )
    else:
        out.append("<p>No denial in this period.</p>")
    out.append("<h3>Policy changes</h3>")
    out.append(
        _table(
            ("time", "change", "trigger", "digest (in force after)", "files", "errors"),
            ((when(r.ts), *r.cells) for r in agg.policy.rows),
        )
        + _rows_note(agg.policy)
    )
    out.append(f"<h3>Loss intervals ({_num('lost-events', agg.lost_events)} events lost)</h3>")
    out.append(
        _table(
            ("from", "to", "events", "by kind", "reason"),
            ((when(r.ts), when(int(r.cells[0])), *r.cells[1:]) for r in agg.loss.rows),
        )
        + _rows_note(agg.loss)
    )
    out.append("<h3>Gaps in enforcement or recording</h3>")
    out.append(
        _table(("time", "gap", "detail"), ((when(r.ts), *r.cells) for r in agg.gaps.rows))
        + _rows_note(agg.gaps)
    )
    out.append("<h3>Agent starts, stops and restarts</h3>")
    out.append(
        _table(("time", "record", "detail"), ((when(r.ts), *r.cells) for r in agg.restarts.rows))
        + _rows_note(agg.restarts)
    )
    out.append(
        f"<p>Who: {_num('with-uid', agg.with_uid)} events and verdicts name the acting "
        f"uid, {_num('with-auid', agg.with_loginuid)} the audit login uid.</p>"
    )
    return out


def _counts(what: str, items: Iterable[tuple[str, int]]) -> str:
    rows = sorted(items, key=lambda kv: (-kv[1], kv[0]))
    if not rows:
        return "<p>None.</p>"
    out = [f"<table><tr><th>{_e(what)}</th><th>records</th></tr>"]
    for name, n in rows:
        out.append(f'<tr><td>{_e(name)}</td><td class="n">{_num(f"{what}-{name}", n)}</td></tr>')
    return "".join(out) + "</table>"


def _compliance() -> str:
    out = [
        "<h2>What this journal proves, by audit-log control</h2>",
        "<p>What sealtrail records and how, as the controls ask; only what the product "
        "does is claimed, with what it does not do beside it. The numbers are in the host "
        "sections above.</p>",
        _table(("attribute", "proven by"), ((a.name, a.proven_by) for a in ATTRIBUTES)),
        _table(
            ("control", "asks", "sealtrail provides", "not covered"),
            ((c.control, c.asks, c.provides, c.not_covered) for c in CONTROLS),
        ),
    ]
    return "\n".join(out)
