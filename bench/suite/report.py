"""The Markdown report and its matplotlib charts, from the results dictionary alone (so a
saved JSON can be rendered again: python -m bench.suite --render results.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

CONFIG_LABEL = {
    "none": "no agent",
    "monitor": "sealtrail monitor",
    "enforce": "sealtrail enforce",
    "rules1000": "sealtrail 1,000 rules",
    "auditd": "auditd",
}
SEALTRAIL = ("monitor", "enforce", "rules1000")
CHARTS = ("overhead.png", "throughput.png", "evidence.png")


def ns(v: float | None, sign: str = "") -> str:
    """A duration in ns, in the unit that keeps it readable (``sign="+"``: always signed)."""
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:{sign},.2f} ms"
    if a >= 1e4:
        return f"{v / 1e3:{sign},.1f} µs"
    return f"{v:{sign},.0f} ns"


def n(v: float | None, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def run_label(r: dict[str, Any]) -> str:
    rate = "flood" if r["offered_rate"] is None else f"{r['offered_rate']:,.0f}/s"
    ring = f"\n{r['ringbuf_bytes'] >> 10} KiB ring" if r.get("ringbuf_bytes") == 64 << 10 else ""
    return f"{r['who']}\n{rate}{ring}"


def charts(res: dict[str, Any], out: Path) -> list[Path]:
    paths = []
    ov = res["overhead"]
    wls = [r["workload"] for r in ov["rows"]]
    configs = [c for c in ("monitor", "enforce", "rules1000", "auditd")]
    cols = 4
    nrows = (len(wls) + cols - 1) // cols
    fig, grid = plt.subplots(nrows, cols, figsize=(12, 3.4 * nrows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(wls) :]:
        ax.set_visible(False)
    for ax, row in zip(axes, ov["rows"], strict=False):
        vals = [row["configs"][c]["added"] for c in configs]
        errs = [row["configs"][c]["noise"] / 2 for c in configs]
        colors = ["#4c72b0", "#55a868", "#8172b2", "#c44e52"]
        ax.bar(range(len(configs)), vals, yerr=errs, color=colors, capsize=3)
        ax.set_xticks(range(len(configs)), ["mon", "enf", "1000", "auditd"], fontsize=8)
        ax.set_title(f"{row['workload']}\n({row['records']} record)", fontsize=9)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.tick_params(axis="y", labelsize=7)
    for r in range(nrows):
        axes[r * cols].set_ylabel("added ns per operation\n(median; bar: spread/2)")
    fig.suptitle("Added cost per operation against no agent", fontsize=10)
    fig.tight_layout()
    paths.append(out / "overhead.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    tp = res["throughput"]["runs"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    offered = [*sorted({r["offered_rate"] for r in tp if r["offered_rate"]}), None]
    ticks = [f"{o:,.0f}" if o else "flood" for o in offered]
    for who, marker in (("sealtrail", "o"), ("auditd", "s")):
        runs = {r["offered_rate"]: r for r in tp
                if r["who"] == who and r.get("ringbuf_bytes", 8 << 20) == 8 << 20}  # fmt: skip
        xs = [i for i, o in enumerate(offered) if o in runs]
        ax1.plot(xs, [runs[offered[i]]["produced_per_s"] for i in xs], marker, linestyle="-",
                 label=f"with {who}")  # fmt: skip
    ax1.set_xticks(range(len(offered)), ticks)
    ax1.set_xlabel("offered UDP connects per second")
    ax1.set_ylabel("UDP connects made per second")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ax1.set_title("auditd's backlog wait slows the workload itself", fontsize=9)
    labels = [run_label(r) for r in tp]
    rec = [r["recorded"] for r in tp]
    lost = [r["lost"] + max(r["unaccounted"], 0) for r in tp]
    ax2.bar(range(len(tp)), rec, color="#4c72b0", label="recorded")
    ax2.bar(range(len(tp)), lost, bottom=rec, color="#c44e52", label="lost (loss records / "
            "audit lost) + unaccounted")  # fmt: skip
    ax2.set_xticks(range(len(tp)), labels, fontsize=6)
    ax2.set_ylabel("events of the run")
    ax2.legend(fontsize=7)
    ax2.set_title("every event recorded or counted as lost", fontsize=9)
    fig.suptitle("Throughput: UDP connects into sealtrail's sealed journal and auditd's log",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    paths.append(out / "throughput.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    ev = res["evidence"]
    sides = [("sealtrail", ev["sealtrail"]), ("journald FSS 15min", ev["journald"]),
             ("journald FSS 100ms", ev["journald_100ms"])]  # fmt: skip
    sides = [(k, v) for k, v in sides if "error" not in v]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.bar([k for k, _ in sides], [v["verify_per_s"] for _, v in sides],
            color=["#4c72b0", "#c44e52", "#dd8452"][: len(sides)])  # fmt: skip
    ax1.set_ylabel("records verified per second (CLI wall time)")
    ax2.bar([k for k, _ in sides], [v["bytes_per_record"] for _, v in sides],
            color=["#4c72b0", "#c44e52", "#dd8452"][: len(sides)])  # fmt: skip
    ax2.set_ylabel("bytes per record on disk")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"Evidence cost, {ev['records']:,} records", fontsize=10)
    fig.tight_layout()
    paths.append(out / "evidence.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def loss_reason(row: dict[str, Any], cfg: str, ov: dict[str, Any]) -> str:
    """What the measurements of this run say about a row sealtrail loses."""
    st = row["configs"][cfg]
    wl = row["workload"]
    bpf = ov["bpf_ns_per_op"].get(cfg, {}).get(wl, {}).get("total_ns")
    cpu = ov["agent_cpu_us"].get(cfg, {}).get(wl)
    ctl = next((r for r in ov["rows"] if r["workload"] == "getppid"), None)
    marks = ov.get("fanotify_marks", {}).get(cfg, {})
    parts = []
    if bpf is not None:
        parts.append(f"sealtrail's BPF programs ran {ns(bpf)} per operation of the "
                     f"{ns(st['added'])} added")  # fmt: skip
    if ctl is not None and wl != "getppid":
        slow = ns(ctl["configs"][cfg]["added"], "+")
        parts.append(f"getppid, which no probe handles, cost {slow} per call under this "
                     "configuration and "
                     f"{ns(ctl['configs']['auditd']['added'], '+')} under auditd: on this kernel "
                     "syscall tracepoints move every syscall to the slow path")  # fmt: skip
    if marks.get("sdev") and wl in ("fork+exec", "tar x"):
        parts.append(f"the agent held {marks['sdev']} filesystem-wide fanotify mark(s) "
                     "(exec permission): every exec waits for its answer")  # fmt: skip
    if cpu:
        med = sorted(cpu)[len(cpu) // 2]
        parts.append(f"the agent spent {med:,.2f} µs of CPU per operation (all threads; it "
                     "records other sessions' events too)")  # fmt: skip
    if st["within_noise"]:
        parts.append(f"the difference is within the noise ({ns(st['noise'])})")
    return "; ".join(parts) or "no further measurement"


def other_losses(res: dict[str, Any]) -> list[str]:
    """The rows outside the overhead table where auditd or journald does better."""
    out = []
    runs = res["throughput"]["runs"]
    rss = {who: max((r["rss_max_kib"] for r in runs if r["who"] == who), default=0)
           for who in ("sealtrail", "auditd")}  # fmt: skip
    if rss["sealtrail"] > rss["auditd"]:
        out.append(f"**memory**: the agent's RSS up to {rss['sealtrail'] / 1024:.0f} MiB against "
                   f"auditd's {rss['auditd'] / 1024:.0f} MiB over the throughput runs (VmRSS, "
                   "sampled every 100 ms)")  # fmt: skip
    for rate in sorted({r["offered_rate"] or 0 for r in runs}):
        st = [r for r in runs if r["who"] == "sealtrail" and (r["offered_rate"] or 0) == rate
              and r["ringbuf_bytes"] == 8 << 20]  # fmt: skip
        au = [r for r in runs if r["who"] == "auditd" and (r["offered_rate"] or 0) == rate]
        if not st or not au:
            continue
        s, a = st[0], au[0]
        what = f"{rate:,.0f}/s offered" if rate else "a flood"
        if s["agent_cpu_pct"] > a["auditd_cpu_pct"]:
            out.append(f"**CPU at {what}**: the agent {s['agent_cpu_pct']:.0f} % of a core "
                       f"against the auditd daemon's {a['auditd_cpu_pct']:.0f} % (kauditd's "
                       "kernel thread not counted)")  # fmt: skip
        if s["lost"] + max(s["unaccounted"], 0) > a["lost"] + max(a["unaccounted"], 0):
            out.append(f"**events not recorded at {what}**: sealtrail {s['lost']:,} lost and "
                       f"{s['unaccounted']:,} unaccounted, auditd {a['lost']:,} and "
                       f"{a['unaccounted']:,}")  # fmt: skip
    ev = res["evidence"]
    s = ev["sealtrail"]
    for key in ("journald", "journald_100ms"):
        j = ev[key]
        if "error" in j:
            continue
        label = f"journald FSS ({j['seal_interval']})"
        if j["verify_per_s"] > s["verify_per_s"]:
            out.append(f"**verify rate**: {label} verified {j['verify_per_s']:,.0f} records/s by "
                       f"its CLI, sealtrail {s['verify_per_s']:,.0f}/s (measured: wall time of "
                       f"`sealtrail journal verify`, {min(s['verify_wall_s']):.2f} s, mostly the "
                       "Python interpreter's start at this size; in process "
                       f"{s['verify_in_process_per_s']:,.0f}/s)")  # fmt: skip
        if j["bytes_per_record"] < s["bytes_per_record"]:
            out.append(f"**bytes per record**: {label} {j['bytes_per_record']:.0f}, sealtrail "
                       f"{s['bytes_per_record']:.0f}")  # fmt: skip
    return out


def markdown(res: dict[str, Any], charts_rel: list[str]) -> str:
    m, ov, tp, ev = res["machine"], res["overhead"], res["throughput"], res["evidence"]
    out: list[str] = []
    w = out.append
    w(f"# sealtrail vs auditd vs journald: {res['mode']} run of {res['time']}\n")
    w(f"> {res['note']}\n")
    w("## Machine\n")
    w(f"- CPU: {m['cpu_model']}, {m['cores']} cores; memory {m['mem_gib']:.1f} GiB")
    w(f"- kernel {m['kernel']}; load average before {m['loadavg_before']}, after "
      f"{m['loadavg_after']}")  # fmt: skip
    w(f"- sealtrail commit {res['commit']}; probes {res['probes'].get('probes_commit', '?')[:12]}")
    w(f"- `sealtrail doctor`: {m['doctor']}")
    w(f"- auditd {m['auditd_version']}, systemd {m['systemd_version']}")
    tainted = ov.get("tainted") or {}
    if tainted:
        seen = sorted({x for v in tainted.values() for s in v for x in s})
        w(f"- samples taken while other sessions' BPF tracing programs or fanotify groups were "
          f"loaded: {sum(len(v) for v in tainted.values())} ({', '.join(seen[:8])})")  # fmt: skip
    w("\n## Commands\n")
    w("```")
    for line in res["commands"]:
        w(line)
    w("```\n")

    w("## Added cost per operation\n")
    w(f"{ov['rounds']} rounds, configurations interleaved and rotated round by round; median of "
      "rounds minus the no-agent median (`+`), min..max of the rounds as the spread. Ratio = "
      "auditd-added / sealtrail-added (higher is better for sealtrail; `-` where sealtrail "
      "added nothing measurable). Goal: ratio ≥ 5 where both record, sealtrail-added ≤ "
      "auditd-added where neither records.\n")  # fmt: skip
    w("| operation | recorded by | no agent | " + " | ".join(
        f"{CONFIG_LABEL[c]}" for c in ("monitor", "enforce", "rules1000", "auditd"))
      + " | auditd/mon | auditd/enf | auditd/1000 | goal |")  # fmt: skip
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in ov["rows"]:
        c = row["configs"]
        base = c["none"]
        cells = [row["workload"], row["records"],
                 f"{ns(base['median'])} ({ns(base['min'])}..{ns(base['max'])})"]  # fmt: skip
        for cfg in ("monitor", "enforce", "rules1000", "auditd"):
            cells.append(f"{ns(c[cfg]['added'], '+')} ({ns(c[cfg]['min'])}..{ns(c[cfg]['max'])})")
        for cfg in SEALTRAIL:
            cells.append(n(c[cfg]["ratio"], ".1f") + "x" * (c[cfg]["ratio"] is not None))
        met = [cfg for cfg in SEALTRAIL if c[cfg]["goal_met"]]
        lost = [CONFIG_LABEL[x].replace("sealtrail ", "") for x in SEALTRAIL if x not in met]
        cells.append("met" if not lost else f"NOT met ({', '.join(lost)})")
        w("| " + " | ".join(cells) + " |")
    w("")
    w("Workloads: " + "; ".join(f"**{k}**: {v['what']} ({v['iters']:,} per sample)"
                                for k, v in ov["workloads"].items()) + ".\n")  # fmt: skip
    if "overhead.png" in charts_rel:
        w("![added cost per operation](overhead.png)\n")
    w("BPF run time of the agent's programs per operation (`BPF_ENABLE_STATS`, a separate pass"
      " with a quarter of the iterations, round 0; the probes are host-wide, so their run time "
      "per second without our workload, measured for 1 s before, is subtracted) and the "
      "agent's CPU time per operation (utime+stime of all its threads over the sample, which "
      "includes recording other sessions' events; clock-tick resolution; median of "
      "rounds):\n")  # fmt: skip
    w("| operation | " + " | ".join(f"{CONFIG_LABEL[c]} BPF | CPU" for c in SEALTRAIL) + " |")
    w("|---|" + "---|---|" * len(SEALTRAIL))
    for row in ov["rows"]:
        cells = [row["workload"]]
        for cfg in SEALTRAIL:
            b = ov["bpf_ns_per_op"].get(cfg, {}).get(row["workload"], {}).get("total_ns")
            cpu = ov["agent_cpu_us"].get(cfg, {}).get(row["workload"])
            cells += [ns(b), "-" if not cpu else f"{sorted(cpu)[len(cpu) // 2]:,.2f} µs"]
        w("| " + " | ".join(cells) + " |")
    w("")
    top = {}
    for cfg in SEALTRAIL:
        for wl, d in ov["bpf_ns_per_op"].get(cfg, {}).items():
            for prog, v in d.get("by_program", {}).items():
                if v >= 1:
                    top.setdefault(f"{wl}", {})[f"{prog} ({cfg})"] = v
    if top:
        w("<details><summary>BPF run time by program (ns per operation)</summary>\n")
        for wl, progs in top.items():
            w(f"- {wl}: " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(
                progs.items(), key=lambda kv: -kv[1])[:8]))  # fmt: skip
        w("\n</details>\n")
    losses = [(row, cfg) for row in ov["rows"] for cfg in SEALTRAIL
              if not row["configs"][cfg]["goal_met"]]  # fmt: skip
    w("### Where sealtrail loses\n")
    others = other_losses(res)
    if not losses and not others:
        w("Nowhere in this run.\n")
    for line in others:
        w(f"- {line}")
    for row, cfg in losses:
        c = row["configs"]
        goal = "ratio ≥ 5" if row["records"] == "both" else "sealtrail-added ≤ auditd-added"
        w(f"- **{row['workload']}, {CONFIG_LABEL[cfg]}**: {ns(c[cfg]['added'], '+')} against "
          f"auditd's {ns(c['auditd']['added'], '+')} (goal: {goal}). Measured: "
          f"{loss_reason(row, cfg, ov)}.")  # fmt: skip
    w("")

    w("## Throughput: kernel to sealed journal\n")
    w(f"UDP connects offered at fixed rates (`loadgen -R`) or flat out, {tp['seconds']} s per "
      "run, from the bench cgroup on CPU 1; sealtrail on CPU 0 with the example policies "
      "(enforcing) and its default record kinds, a new agent per run; auditd with the rules "
      "above (backlog limit 8192, backlog_wait_time 60000, Debian's defaults). `recorded`: "
      "journal event records (sealtrail) or SYSCALL records in audit.log (auditd) of the load "
      "generator's pid; `lost`: the count of sealtrail's `loss` records, auditd's kernel `lost` "
      "counter (delta); `unaccounted` = made - recorded - lost.\n")  # fmt: skip
    w("| who | offered/s | ring | made/s | recorded | lost | unaccounted | recorded/s "
      "(journal ts) | backlog max | CPU % | RSS max | verify |")  # fmt: skip
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in tp["runs"]:
        if r["who"] not in ("sealtrail", "auditd"):
            continue
        st = r["who"] == "sealtrail"
        w("| " + " | ".join([
            r["who"], "flood" if r["offered_rate"] is None else n(r["offered_rate"]),
            f"{r['ringbuf_bytes'] >> 10} KiB" if st else "-", n(r["produced_per_s"]),
            n(r["recorded"]), n(r["lost"]), n(r["unaccounted"]),
            n(r.get("recorded_per_s")) if st else "-",
            "-" if st else f"{r['backlog_max']} / {r['backlog_limit']}",
            n(r["agent_cpu_pct"] if st else r["auditd_cpu_pct"], ".0f"),
            f"{r['rss_max_kib'] / 1024:.0f} MiB",
            f"rc {r['verify']['rc']}" if st else "-",
        ]) + " |")  # fmt: skip
    w("")
    st_runs = [r for r in tp["runs"] if r["who"] == "sealtrail"]
    kinds: dict[str, int] = {}
    for r in st_runs:
        for k, v in r.get("types", {}).items():
            kinds[k] = kinds.get(k, 0) + v
    w("Journal records of the sealtrail runs by type: "
      + ", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items())) + ".")  # fmt: skip
    errs = [e for r in st_runs for e in r.get("mismatch_errors", [])]
    if errs:
        w(f" The policy_mismatch records say what the agent could not keep as the policy says, "
          f"e.g. `{errs[0][:160]}`.")  # fmt: skip
    w("")
    w(f"Highest rate sealtrail recorded with zero loss and zero unaccounted: "
      f"**{n(tp['best_lossless_rate'])} events/s** (the highest offered rate here that it met; "
      "the flood runs show where the load generator or the agent's CPU ends).\n")  # fmt: skip
    if "throughput.png" in charts_rel:
        w("![throughput](throughput.png)\n")
    coll = [r for r in tp["runs"] if r["who"] == "sealtrail+collector"]
    if coll:
        w("To a loopback collector: the same agent with `--forward` to `sealtrail collector "
          "serve` on 127.0.0.1 (mutual TLS, SQLite store, both on this machine), the load as "
          "above. `caught up`: seconds after the load ended until the collector held every "
          "journal line written by then; `held`: after the agent's clean stop (it forwards "
          "up to its final seal), records in the collector against records in the "
          "journal.\n")  # fmt: skip
        w("| offered/s | made/s | recorded | lost | unaccounted | caught up | delivered/s | "
          "held / journal |")  # fmt: skip
        w("|---|---|---|---|---|---|---|---|")
        for r in coll:
            w("| " + " | ".join([
                "flood" if r["offered_rate"] is None else n(r["offered_rate"]),
                n(r["produced_per_s"]), n(r["recorded"]), n(r["lost"]), n(r["unaccounted"]),
                f"{r['catch_up_after_load_s']:.2f} s", n(r["delivered_per_s"]),
                f"{r['collector_held']:,} / {r['journal_records']:,}"
                + (" (all)" if r["collector_holds_journal"] else " (NOT all)"),
            ]) + " |")  # fmt: skip
        w("")

    w("## Agent footprint and start\n")
    idle = tp["idle"]
    ten = [r for r in tp["runs"] if r["who"] == "sealtrail" and r["offered_rate"] == 10_000]
    w("| state | agent CPU % of a core | agent RSS |")
    w("|---|---|---|")
    w(f"| idle ({idle['seconds']:.0f} s, example policies; other sessions' execs and "
      f"connects are recorded too) | {idle['cpu_pct']:.1f} | "
      f"{idle['rss_kib'] / 1024:.0f} MiB |")  # fmt: skip
    for r in ten:
        w(f"| 10 k events/s offered ({n(r['produced_per_s'])}/s made) | "
          f"{r['agent_cpu_pct']:.1f} | {r['rss_max_kib'] / 1024:.0f} MiB (max) |")  # fmt: skip
    aud10 = [r for r in tp["runs"] if r["who"] == "auditd" and r["offered_rate"] == 10_000]
    for r in aud10:
        w(f"| auditd at 10 k events/s | {r['auditd_cpu_pct']:.1f} (daemon only, not kauditd) "
          f"| {r['rss_max_kib'] / 1024:.0f} MiB |")  # fmt: skip
    enf = tp["start_to_enforce"]
    starts = sorted(x for v in ov["start_s"].values() for x in v)
    w("")
    if enf:
        d = sorted(e["to_first_deny_s"] for e in enf)
        w(f"Start to enforcing: exec of `sealtrail agent` to the first connect its guard "
          f"denied (EPERM, seen by a process retrying every 2 ms): median {d[len(d) // 2]:.2f} "
          f"s over {len(d)} starts (min {d[0]:.2f}, max {d[-1]:.2f}).")  # fmt: skip
    if starts:
        w(f" Exec to status.json `loaded` over all {len(starts)} agent starts of the overhead "
          f"rounds: median {starts[len(starts) // 2]:.2f} s (min {starts[0]:.2f}, max "
          f"{starts[-1]:.2f}).\n")  # fmt: skip

    w("## Evidence cost: verify and bytes per record\n")
    s = ev["sealtrail"]
    w(f"The same {ev['records']:,} records (journal_bench's mix of exec, exit, fork, connect, "
      "accept, open and verdict records) in both.\n")  # fmt: skip
    w("| journal | seal interval | verify records/s (CLI, best wall time) | verify wall s | "
      "bytes/record used | bytes/record allocated | seals/tags | verify result |")  # fmt: skip
    w("|---|---|---|---|---|---|---|---|")
    w(f"| sealtrail | {s['seal_interval']} | {n(s['verify_per_s'])} "
      f"(in process: {n(s['verify_in_process_per_s'])}) | "
      f"{min(s['verify_wall_s']):.2f} | {s['bytes_per_record']:.0f} | "
      f"{s['bytes_per_record']:.0f} | {s['seals']} | rc {s['verify_rc']}: "
      f"{s['verify_summary'][:60]} |")  # fmt: skip
    for key in ("journald", "journald_100ms"):
        j = ev[key]
        if "error" in j:
            w(f"| journald FSS | - | - | - | - | - | - | {j['error'][:200]} |")
            continue
        w(f"| journald FSS | {j['seal_interval']} | {n(j['verify_per_s'])} | "
          f"{min(j['verify_wall_s']):.2f} | {j['bytes_per_record']:.0f} | "
          f"{j['bytes_allocated_per_record']:.0f} | {j['tags']} | rc {j['verify_rc']}: "
          f"{j['verify_summary'][:60]} |")  # fmt: skip
    w("")
    w("sealtrail's writer seals every 100 ms or 8192 records (the seals column counts them). "
      "FSS seals by epoch: `journalctl --setup-keys` makes 15 min epochs unless told "
      "`--interval`; the 100 ms key is the same tool with `--interval=100ms`, and the tags "
      "column counts the seal tags journal-remote wrote into the files. Wall times include each "
      "CLI's start (the Python interpreter for sealtrail); `in process` is journal_bench's "
      "verifier run (native fast path, file reads included) without it.\n")  # fmt: skip
    if "evidence.png" in charts_rel:
        w("![evidence](evidence.png)\n")
    w(f"Raw numbers: [{res['json_name']}]({res['json_name']}).")
    return "\n".join(out) + "\n"
