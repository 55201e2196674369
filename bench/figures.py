"""The README's figures, drawn from the results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#d62728"]
SCENARIO_COLORS = {"idle": "#7f7f7f", "CONCURRENTLY": "#1f77b4", "PLAIN": "#d62728"}


def _short(view: str) -> str:
    return view.split(".", 1)[-1].removeprefix("mv_")


def scaling(data: dict[str, Any], path: Path, subtitle: str) -> Path:
    scales = data["scales"]
    table, slopes = data["fit"]["table"], data["fit"]["slopes"]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    views = [v for v in table if v != "chain"]
    for color, view in zip(COLORS, views, strict=False):
        xs = [table[view][str(s)]["rows"] for s in scales]
        ys = [table[view][str(s)]["wall_s"] for s in scales]
        ax.plot(xs, ys, "o-", color=color, lw=1.4, ms=5,
                label=f"{_short(view)}  (slope {slopes[view]['wall']:.2f})")
    xs = [table["chain"][str(s)]["rows"] for s in scales]
    ys = [table["chain"][str(s)]["wall_s"] for s in scales]
    lo = [table["chain"][str(s)]["wall_min"] for s in scales]
    hi = [table["chain"][str(s)]["wall_max"] for s in scales]
    ax.errorbar(xs, ys, yerr=[[y - a for y, a in zip(ys, lo, strict=True)], [b - y for y, b in zip(ys, hi, strict=True)]],
                fmt="s-", color="black", lw=2.4, ms=7, capsize=4,
                label=f"whole chain, 6 views  (slope {slopes['chain']['wall']:.2f})")
    # Linear reference through the chain's largest point.
    ref = [ys[-1] * x / xs[-1] for x in xs]
    ax.plot(xs, ref, "--", color="black", lw=1, alpha=0.5, label="linear (slope 1) reference")
    for x, y, s in zip(xs, ys, scales, strict=True):
        ax.annotate(f"{s:,} drivers\n{y:.2f} s", (x, y), textcoords="offset points", xytext=(8, -24), fontsize=8,
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_xscale("log")
    ax.set_yscale("log")
    every_x = [table[v][str(s)]["rows"] for v in table for s in scales]
    ax.set_xlim(min(every_x) / 1.5, max(every_x) * 3)
    ax.set_xlabel("rows after the refresh: a view's own, or all six for the chain (log)")
    ax.set_ylabel("refresh time through the engine, seconds (log)")
    ax.set_title(f"Refresh time vs rows, CONCURRENTLY, data unchanged\n{subtitle}", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def reader_latency(data: dict[str, Any], summary: dict[str, dict[str, float]], path: Path, subtitle: str) -> Path:
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), dpi=120)
    points = data["samples"]["point"]
    rep0 = {w["scenario"]: w for w in data["windows"] if w["rep"] == 0}
    ymax = max((lat for _, lat in points), default=1.0) * 1000 * 1.5
    ymin = max(min((lat for _, lat in points), default=1e-4) * 1000 * 0.7, 1e-2)
    for ax, scenario in zip([axes[0][0], axes[0][1], axes[1][0]], ("idle", "CONCURRENTLY", "PLAIN"), strict=True):
        w = rep0[scenario]
        t0, t1 = w["t0"], w["t1"]
        xs = [s - t0 for s, lat in points if t0 - 0.4 <= s <= t1 + 0.4]
        ys = [lat * 1000 for s, lat in points if t0 - 0.4 <= s <= t1 + 0.4]
        ax.axvspan(0, t1 - t0, color=SCENARIO_COLORS[scenario], alpha=0.12,
                   label="refresh running" if scenario != "idle" else "idle window")
        ax.scatter(xs, ys, s=6, color=SCENARIO_COLORS[scenario], label="a lookup (at its start)")
        # A slow lookup also as a bar from its start to its answer: how long that reader waited.
        slow = [(x, y) for x, y in zip(xs, ys, strict=True) if y >= 20]
        if slow:
            ax.hlines([y for _, y in slow], [x for x, _ in slow], [x + y / 1000 for x, y in slow],
                      color=SCENARIO_COLORS[scenario], lw=2, label="waiting (lookups >= 20 ms)")
        a = summary[scenario]
        what = "no refresh" if scenario == "idle" else f"REFRESH {'CONCURRENTLY' if scenario == 'CONCURRENTLY' else '(plain)'}"
        ax.set_title(f"{what}: p99 {a['point_p99'] * 1000:.1f} ms, longest stall {a['stall'] * 1000:.0f} ms",
                     fontsize=10)
        ax.set_yscale("log")
        ax.set_ylim(ymin, ymax)
        ax.set_xlabel("seconds since the window started")
        ax.set_ylabel("point lookup latency, ms (log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="center right", framealpha=0.9)
    ax = axes[1][1]
    for scenario in ("idle", "CONCURRENTLY", "PLAIN"):
        lat = []
        for w in data["windows"]:
            if w["scenario"] != scenario:
                continue
            lat.extend(x * 1000 for s, x in points if s <= w["t1"] and s + x >= w["t0"])
        lat.sort()
        if not lat:
            continue
        ys = [(i + 1) / len(lat) for i in range(len(lat))]
        ax.step(lat, ys, where="post", color=SCENARIO_COLORS[scenario], label=f"{scenario} ({len(lat):,} lookups)")
    ax.set_xscale("log")
    ax.set_xlabel("point lookup latency, ms (log)")
    ax.set_ylabel("fraction of lookups at or below")
    ax.set_title("latency distribution, all windows", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"What readers feel: point lookups on (driver_id, milestone_value) of {data['view']}\n{subtitle}",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def modes(data: dict[str, Any], path: Path, subtitle: str) -> Path:
    import statistics

    labels = data["fractions"]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    xs = list(range(len(labels)))
    for mode, color, offset in (("CONCURRENTLY", SCENARIO_COLORS["CONCURRENTLY"], -0.04),
                                ("PLAIN", SCENARIO_COLORS["PLAIN"], 0.04)):
        med = [statistics.median(data["times"][label][mode]) for label in labels]
        lo = [m - min(data["times"][label][mode]) for m, label in zip(med, labels, strict=True)]
        hi = [max(data["times"][label][mode]) - m for m, label in zip(med, labels, strict=True)]
        ax.errorbar([x + offset for x in xs], med, yerr=[lo, hi], fmt="o-", color=color, capsize=4, lw=2,
                    label=f"REFRESH {'CONCURRENTLY' if mode == 'CONCURRENTLY' else '(plain)'}")
        for x, m in zip(xs, med, strict=True):
            ax.annotate(f"{m:.2f} s", (x + offset, m), textcoords="offset points",
                        xytext=(6, 6 if mode == "CONCURRENTLY" else -14), fontsize=8, color=color)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{label}\n({data['view_fraction_changed'][label] * 100:.1f}% of rows)" for label in labels])
    ax.set_xlabel("fraction of the source changed before the refresh (measured share of the view's rows)")
    ax.set_ylabel("refresh time, seconds")
    top = max(max(v) for modes_ in data["times"].values() for v in modes_.values())
    ax.set_ylim(0, top * 1.15 if top > 0 and not math.isnan(top) else 1)
    ax.set_title(f"CONCURRENTLY vs plain refresh of {data['view']} ({data['view_rows']:,} rows)\n{subtitle}",
                 fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
