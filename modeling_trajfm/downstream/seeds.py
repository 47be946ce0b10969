"""Several compare reports on different splits, summarised: mean, sample std and a 95%
Student-t interval across splits of each entry's primary figure, of its margin to the best same-inputs baseline, of
the average-F1 improvement and of the frozen probes' pre-trained-minus-random difference.

A bootstrap interval (`stats`) says how much one test set of 100-444 examples can move a figure; it cannot say how
much the figure moves with the split itself. Fine-tuning again with another `--data_seed` re-draws the train /
validation / test split of the held-out users' trajectories, so each report tests on other trajectories:

    python run_finetune.py configs/nyc_compare.yaml --data_seed 43 --output_dir nyc-compare-seed43
    python -m modeling_trajfm.downstream.seeds nyc-compare nyc-compare-seed43 ... --output_dir nyc-seeds

The paper's seen-user protocol (`seen_users`, `make nyc-seen-seeds`) pre-trains once per split, since each split
moves trajectories in or out of pre-training; its reports are summarised the same way.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .probes import LINKING

#: Report keys of the average-F1 improvement (percent) summarised across splits.
IMPROVEMENTS = ("avg_f1_improvement_pct", "avg_f1_improvement_pct_paper_tasks", "avg_f1_improvement_pct_classifier",
                "avg_f1_improvement_pct_paper_tasks_classifier")
REPORT_FILE = "compare_report.json"


@functools.cache
def student_t_quantile(probability: float, dof: int) -> float:
    """The `probability` quantile (0.5 < p < 1) of Student's t with `dof` degrees of freedom (numpy only: the density
    integrated on a fine grid, inverted by bisection; within 1e-4 of tabled values). Cached: a summary asks for the
    same few quantiles once per figure."""
    if not 0.5 < probability < 1 or dof < 1:
        raise ValueError(f"need 0.5 < probability < 1 and dof >= 1, got {probability} and {dof}.")
    log_scale = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def cdf(x: float) -> float:
        grid = np.linspace(0.0, x, 20001)
        density = np.exp(log_scale - (dof + 1) / 2 * np.log1p(grid ** 2 / dof))
        return 0.5 + float(np.sum((density[1:] + density[:-1]) / 2) * (grid[1] - grid[0]))

    low, high = 0.0, 1.0
    while cdf(high) < probability:
        low, high = high, 2 * high
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < probability else (low, middle)
    return (low + high) / 2


def across_splits(values: Sequence[float | None], confidence: float = 0.95) -> dict[str, Any]:
    """Per-split values with their mean, sample std and Student-t interval of the mean (None below two values)."""
    known = np.asarray([v for v in values if v is not None], dtype=np.float64)
    summary: dict[str, Any] = {"values": list(values), "n": int(known.size),
                               "mean": float(known.mean()) if known.size else None, "std": None, "ci95": None}
    if known.size >= 2:
        std = float(known.std(ddof=1))
        half = student_t_quantile(0.5 + confidence / 2, known.size - 1) * std / math.sqrt(known.size)
        summary.update(std=std, ci95=[summary["mean"] - half, summary["mean"] + half])
    return summary


def _entry_summary(per_split: list[dict[str, Any]], confidence: float) -> dict[str, Any]:
    """One entry across splits, on the metric its same-inputs verdict uses (the task's primary metric)."""
    metric = per_split[0]["same_inputs"]["metric"]
    verdicts = [task["same_inputs"] for task in per_split]
    summary: dict[str, Any] = {
        "metric": metric,
        "test_examples": [task.get("split", {}).get("test_examples") for task in per_split],
        "best_baselines": [verdict["best_baseline"] for verdict in verdicts],
        "answer_forms": {init: [task[init].get("answer_form", "classifier") for task in per_split]
                         for init in ("pretrained", "random")},
        "best_baseline": across_splits([verdict["best_baseline_value"] for verdict in verdicts], confidence),
    }
    for init in ("pretrained", "random"):
        summary[init] = across_splits([task[init].get(metric) for task in per_split], confidence)
        margins = [verdict.get(f"{init}_margin") for verdict in verdicts]
        summary[f"{init}_margin"] = across_splits(margins, confidence)
        summary[f"{init}_beats"] = sum(margin is not None and margin >= 0 for margin in margins)
    return summary


def _probe_differences(reports: Sequence[Mapping[str, Any]], confidence: float) -> dict[str, Any]:
    """Frozen linking probes: pre-trained minus random accuracy@1 per split."""
    differences: dict[str, list[float | None]] = {}
    for report in reports:
        for form, by_init in report.get("probes", {}).get("tasks", {}).get(LINKING, {}).items():
            differences.setdefault(form, []).append(by_init["pretrained"]["accuracy@1"]
                                                    - by_init["random"]["accuracy@1"])
    return {form: across_splits(values, confidence) for form, values in differences.items()}


def seeds_summary(reports: Mapping[str, Mapping[str, Any]], confidence: float = 0.95) -> dict[str, Any]:
    """Summary across splits of `compare_report.json` contents keyed by a label (their folder); every report must
    hold the same entries."""
    if len(reports) < 2:
        raise ValueError(f"Give at least two compare reports (one per split seed), got {len(reports)}.")
    labels, contents = list(reports), list(reports.values())
    entries = list(contents[0]["tasks"])
    for label, report in reports.items():
        if list(report["tasks"]) != entries:
            raise ValueError(f"{label} holds entries {list(report['tasks'])}, {labels[0]} holds {entries}: "
                             "compare every split on the same --tasks.")
        dated = [entry for entry, task in report["tasks"].items() if "same_inputs" not in task]
        if dated:
            raise ValueError(f"{label}: entries {dated} have no `same_inputs` verdict; the report was written by an "
                             "older trajfm. Run that compare again (run_finetune.py --compare ...).")
    return {
        "reports": labels,
        "confidence": confidence,
        "method": "mean and sample std over splits; Student-t interval of the mean (n - 1 degrees of freedom)",
        "tasks": {entry: _entry_summary([report["tasks"][entry] for report in contents], confidence)
                  for entry in entries},
        "improvement_pct": {key: across_splits([report.get(key) for report in contents], confidence)
                            for key in IMPROVEMENTS},
        "frozen_linking_probe_difference": _probe_differences(contents, confidence),
    }


def _fmt(summary: dict[str, Any], digits: int = 3, sign: bool = False) -> str:
    if summary["mean"] is None:
        return "n/a"
    number = f"{{:{'+' if sign else ''}.{digits}f}}"
    text = number.format(summary["mean"])
    if summary["std"] is not None:
        low, high = summary["ci95"]
        text += f" ± {summary['std']:.{digits}f} [{number.format(low)}, {number.format(high)}]"
    return text


def seeds_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables: mean ± std [95% t-interval] across splits."""
    n = len(summary["reports"])
    lines = [f"# Across {n} splits ({', '.join(summary['reports'])})", "",
             "Mean ± sample std [95% Student-t interval of the mean] over the splits; margin = model minus the best "
             "baseline that sees the same inputs, per split.", "",
             "| entry (metric) | pre-trained | random init | best same-inputs baseline | margin, pre-trained "
             "| splits where pre-trained ≥ baseline |", "|---|---|---|---|---|---|"]
    for entry, task in summary["tasks"].items():
        baselines = ", ".join(sorted(set(task["best_baselines"])))
        lines.append(f"| {entry} ({task['metric']}) | {_fmt(task['pretrained'])} | {_fmt(task['random'])} | "
                     f"{_fmt(task['best_baseline'])} ({baselines}) | {_fmt(task['pretrained_margin'], sign=True)} | "
                     f"{task['pretrained_beats']} / {n} |")
    lines += ["", "| average-F1 improvement over random init (%) | across splits |", "|---|---|"]
    lines += [f"| {key} | {_fmt(value, digits=1, sign=True)} |" for key, value in summary["improvement_pct"].items()]
    if summary["frozen_linking_probe_difference"]:
        lines += ["", "| frozen linking probe, pre-trained minus random accuracy@1 | across splits |", "|---|---|"]
        lines += [f"| {form} | {_fmt(value, sign=True)} |"
                  for form, value in summary["frozen_linking_probe_difference"].items()]
    return "\n".join(lines) + "\n"


def summarize_folders(folders: Sequence[str | Path], output_dir: str | Path) -> dict[str, Any]:
    """Read each folder's `compare_report.json`, write `seeds_report.{json,md}` in `output_dir`, return the summary."""
    reports = {}
    for folder in folders:
        path = Path(folder) / REPORT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"No {REPORT_FILE} in {folder}: pass folders written by run_finetune.py "
                                    "--compare.")
        reports[str(folder)] = json.loads(path.read_text())
    summary = seeds_summary(reports)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "seeds_report.json").write_text(json.dumps(summary, indent=1))
    (output / "seeds_report.md").write_text(seeds_markdown(summary))
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Summarise compare reports of several split seeds.")
    parser.add_argument("folders", nargs="+", help="Output folders of run_finetune.py --compare, one per split seed.")
    parser.add_argument("--output_dir", required=True, help="Where seeds_report.{json,md} are written.")
    args = parser.parse_args(argv)
    summary = summarize_folders(args.folders, args.output_dir)
    print(seeds_markdown(summary))
    return summary


if __name__ == "__main__":
    main()
