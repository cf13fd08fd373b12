"""The report's charts: matplotlib (Agg, no display) rendered to PNG, embedded in the page as
``data:`` URIs (a PNG carries no markup: nothing of the journal can run in the page)."""

from __future__ import annotations

import base64
import io
from array import array
from datetime import UTC

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates
import numpy as np
from matplotlib.figure import Figure

BINS = 120
_WIDTH, _HEIGHT, _DPI = 10.0, 3.2, 100


def _png(fig: Figure) -> str:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=_DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def timeline(series: dict[str, array[int]], title: str, start: int, end: int) -> str | None:
    """Counts per time bin of each series (ns timestamps), stacked; None if there is nothing."""
    if not series or not any(series.values()):
        return None
    end = max(end, start + 1)
    edges = np.linspace(start, end, BINS + 1)
    fig = Figure(figsize=(_WIDTH, _HEIGHT))
    ax = fig.add_subplot()
    names = sorted(series, key=lambda k: -len(series[k]))
    counts = [np.histogram(np.frombuffer(series[n], dtype=np.int64), bins=edges)[0] for n in names]
    days = edges / 1e9 / 86400  # matplotlib's dates: days since 1970-01-01, its default epoch
    bottom = np.zeros(BINS)
    for name, count in zip(names, counts, strict=True):
        top = bottom + count  # one filled step outline per series: cheap whatever the bins
        ax.stairs(top, days, baseline=bottom, fill=True, label=f"{name} ({int(count.sum())})")
        bottom = top
    ax.set_title(title)
    ax.set_ylabel(f"records per {(end - start) / 1e9 / BINS:.3g} s")
    ax.xaxis_date(UTC)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M:%S", tz=UTC))  # type: ignore[no-untyped-call]
    fig.autofmt_xdate()
    ax.legend(loc="upper left", fontsize="small", ncols=min(4, len(names)))
    return _png(fig)


def bars(values: dict[str, int], title: str, limit: int = 25) -> str | None:
    """A horizontal bar per key, the largest first (at most ``limit``)."""
    if not values:
        return None
    top = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    fig = Figure(figsize=(_WIDTH, 0.6 + 0.3 * len(top)))
    ax = fig.add_subplot()
    labels = [k if len(k) <= 60 else k[:57] + "..." for k, _ in reversed(top)]
    ax.barh(labels, [v for _, v in reversed(top)])
    ax.set_title(title)
    ax.set_xlabel("verdicts")
    return _png(fig)
