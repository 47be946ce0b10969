"""The pre-trained vs random-init comparison report (JSON, Markdown, bar chart) and its average-F1 formula:

    avg_f1_improvement_pct = 100 * (mean_t F1_pretrained(t) - mean_t F1_random(t)) / mean_t F1_random(t)

over the report's task entries t, with F1 = binary F1 (next_subtrajectory, user_association_binary) or macro-F1
(destination, user_association_linking): the relative improvement of the average F1, as the paper's "33.6 % better in
average F1". `avg_f1_improvement_pct_paper_tasks` is the same over the paper's three tasks (binary association).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .builders import PreparedTask

INITS = ("pretrained", "random")
PAPER_TASKS = ("next_subtrajectory", "destination", "user_association_binary")
#: The F1 each report entry contributes to the average (macro-F1 for multi-class tasks).
PRIMARY_F1 = {
    "next_subtrajectory": "f1",
    "destination": "macro_f1",
    "user_association_linking": "macro_f1",
    "user_association_binary": "f1",
}
LOWER_IS_BETTER = ("distance_km_mean", "distance_km_median", "loss")
AVG_F1_FORMULA = ("100 * (mean_t F1_pretrained(t) - mean_t F1_random(t)) / mean_t F1_random(t); F1 = binary F1 for "
                  "pair tasks, macro-F1 for destination and user linking")


def primary_f1(entry: str, metrics: dict[str, float]) -> float:
    return float(metrics[PRIMARY_F1[entry]])


def relative_improvement(pre: float, rand: float, lower_is_better: bool = False) -> float | None:
    """100 * (pre - rand) / |rand| (sign flipped when lower is better); None when undefined."""
    if rand == 0 or not math.isfinite(rand) or not math.isfinite(pre):
        return None
    return 100.0 * ((rand - pre) if lower_is_better else (pre - rand)) / abs(rand)


def avg_f1_improvement(report_tasks: dict[str, dict], entries: Iterable[str]) -> float | None:
    """100 * (mean F1 pretrained - mean F1 random) / mean F1 random over `entries` (see the module docstring)."""
    entries = [e for e in entries if e in report_tasks]
    if not entries:
        return None
    pre = float(np.mean([primary_f1(e, report_tasks[e]["pretrained"]) for e in entries]))
    rand = float(np.mean([primary_f1(e, report_tasks[e]["random"]) for e in entries]))
    return relative_improvement(pre, rand)


def compare_report(results: dict[str, dict[str, dict]], tasks: dict[str, PreparedTask]) -> dict[str, Any]:
    """`results[entry][init]` = test metrics (keys `test_*`) → the report (see the module docstring)."""
    report_tasks = {}
    for entry, by_init in results.items():
        pre = {k.removeprefix("test_"): v for k, v in by_init["pretrained"].items()}
        rand = {k.removeprefix("test_"): v for k, v in by_init["random"].items()}
        improvement = {
            k: relative_improvement(pre[k], rand[k], k in LOWER_IS_BETTER)
            for k in pre if k in rand and isinstance(pre[k], float) and not k.endswith("samples")
        }
        report_tasks[entry] = {
            "primary_metric": PRIMARY_F1[entry],
            "pretrained": pre,
            "random": rand,
            "baselines": tasks[entry].baselines,
            "improvement_pct": improvement,
            "split": tasks[entry].info,
        }
    return {
        "tasks": report_tasks,
        "avg_f1_pretrained": float(np.mean([primary_f1(e, t["pretrained"]) for e, t in report_tasks.items()])),
        "avg_f1_random": float(np.mean([primary_f1(e, t["random"]) for e, t in report_tasks.items()])),
        "avg_f1_improvement_pct": avg_f1_improvement(report_tasks, report_tasks),
        "avg_f1_improvement_pct_paper_tasks": avg_f1_improvement(report_tasks, PAPER_TASKS)
        if all(e in report_tasks for e in PAPER_TASKS) else None,
        "avg_f1_formula": AVG_F1_FORMULA,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def compare_markdown(report: dict[str, Any]) -> str:
    lines = ["# Fine-tuning: pre-trained vs random init", ""]
    for entry, t in report["tasks"].items():
        baselines = list(t["baselines"])
        lines += [f"## {entry} (primary: {t['primary_metric']})", "",
                  "| metric | pretrained | random | improvement | " + " | ".join(baselines) + " |",
                  "|---|---|---|---|" + "---|" * len(baselines)]
        for metric, value in t["pretrained"].items():
            if not isinstance(value, float) or metric.endswith("samples"):
                continue
            improvement = t["improvement_pct"].get(metric)
            cells = [_fmt(value), _fmt(t["random"].get(metric)),
                     "n/a" if improvement is None else f"{improvement:+.1f}%"]
            cells += [_fmt(t["baselines"][b].get(metric)) for b in baselines]
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        lines.append("")
    avg = report["avg_f1_improvement_pct"]
    paper = report.get("avg_f1_improvement_pct_paper_tasks")
    lines += [
        f"Average F1 over {len(report['tasks'])} task entries: pretrained {report['avg_f1_pretrained']:.4f}, "
        f"random {report['avg_f1_random']:.4f}, improvement "
        f"{'n/a' if avg is None else f'{avg:+.1f}%'} (paper: +33.6%).",
        "",
        f"Formula: {report['avg_f1_formula']}.",
    ]
    if paper is not None:
        lines += ["", f"Over the paper's three tasks (binary user association): {paper:+.1f}%."]
    return "\n".join(lines) + "\n"


def compare_plot(report: dict[str, Any], path: Path) -> Path:
    """Grouped bars: per task entry its primary F1 for pretrained, random and every baseline."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    entries = list(report["tasks"])
    series: dict[str, list[float]] = {"pretrained": [], "random": []}
    for t in report["tasks"].values():
        for name in t["baselines"]:
            series.setdefault(name, [])
    for t in report["tasks"].values():
        key = t["primary_metric"]
        series["pretrained"].append(t["pretrained"][key])
        series["random"].append(t["random"][key])
        for name in list(series)[2:]:
            series[name].append(t["baselines"].get(name, {}).get(key, np.nan))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(entries)), 4), dpi=100)
    x = np.arange(len(entries))
    for i, (name, values) in enumerate(series.items()):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
        # every bar labelled: a zero bar is visibly 0.00, a missing baseline n/a
        ax.bar_label(bars, labels=["n/a" if np.isnan(v) else f"{v:.2f}" for v in values], fontsize=6, padding=1)
    ax.set_xticks(x, [e.replace("_", "\n", 1) for e in entries], fontsize=8)
    ax.set_ylabel("F1 (binary) / macro-F1 (multi-class)")
    ax.set_ylim(0, 1.08)
    avg = report["avg_f1_improvement_pct"]
    ax.set_title(f"Pre-trained vs random init: average F1 {'n/a' if avg is None else f'{avg:+.1f}%'}")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
