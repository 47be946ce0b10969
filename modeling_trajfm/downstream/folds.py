"""k-fold over the held-out users' trajectories, pooled: every trajectory tested once, so each entry's figures and its
margin to the best same-inputs baseline rest on all the test rows of k runs instead of one run's 100-444.

Each run of `run_finetune.py --compare --num_folds k --test_fold f` (same `--data_seed`) tests on fold f, and every
compare writes `<entry>/test_scores.npz` beside its report (`compare.save_test_scores`): each test row's anchor
trajectory and label, the test scores of both inits' answers and of every baseline. This module pools the k runs:

    for f in 0 1 2 3 4; do
        python run_finetune.py configs/nyc_compare.yaml --num_folds 5 --test_fold $f --output_dir nyc-fold$f
    done
    python -m modeling_trajfm.downstream.folds nyc-fold0 nyc-fold1 nyc-fold2 nyc-fold3 nyc-fold4 --output_dir nyc-folds

Per entry it reports the primary metric of each scorer on the pooled rows with a 95% percentile bootstrap interval,
the best baseline among those that see the same inputs (every fold's report lists them) and each init's margin to
it with a paired interval: the same resamples of anchor trajectories for every scorer, as `compare` does on one test
set. Rows are pooled as they are, so each fold's answer keeps the form, checkpoint and thresholds its own validation
chose. Only the primary metric pools this way: destination's macro-F1 is over each fold's own candidate cells.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .builders import PAIR_ENTRIES, PRIMARY_METRIC
from .compare import BASELINE_SCORES_PREFIX, INITS, TEST_SCORES_FILE
from .metrics import primary_by_counts, row_outcomes
from .stats import N_RESAMPLES, bootstrap_resamples, percentile_interval

REPORT_FILE = "compare_report.json"


def _fold_of(folder: Path, entry: str) -> tuple[int | None, int]:
    """(num_folds, test_fold) of the run that wrote `folder/entry`."""
    config = json.loads((folder / entry / INITS[0] / "task_report.json").read_text())["task_config"]
    return config.get("num_folds"), config.get("test_fold", 0)


def _check_partition(folders: Sequence[Path], entry: str, trajectories: list[np.ndarray]) -> None:
    """The folders must be the k folds of one k-fold: k runs, folds 0..k-1, disjoint test trajectories."""
    folds = [_fold_of(folder, entry) for folder in folders]
    k = folds[0][0]
    if k is None or any(n != k for n, _ in folds) or sorted(f for _, f in folds) != list(range(k)):
        raise ValueError(f"{entry}: the folders hold folds {[f for _, f in folds]} of --num_folds "
                         f"{sorted({n for n, _ in folds}, key=str)}; pass the runs of every fold 0..k-1 of one "
                         "k-fold (run_finetune.py --num_folds k --test_fold f, the same --data_seed).")
    seen: set[int] = set()
    for folder, rows in zip(folders, trajectories):
        anchors = set(rows.tolist())
        if anchors & seen:
            raise ValueError(f"{entry}: {folder} tests trajectories another fold tests too; its folds come from "
                             "another --data_seed or other data. Run every fold with the same arguments.")
        seen |= anchors


def _same_inputs_baselines(reports: list[dict[str, Any]], entry: str) -> list[str]:
    """The baselines every fold's report counts as seeing the model's inputs."""
    lists = [report["tasks"][entry]["same_inputs"]["baselines"] for report in reports]
    return [name for name in lists[0] if all(name in names for names in lists[1:])]


def pool_entry(entry: str, saved: list[dict[str, np.ndarray]], baselines: list[str], seed: int = 0,
               n_resamples: int = N_RESAMPLES) -> dict[str, Any]:
    """One entry's pooled figures from each fold's `TEST_SCORES_FILE` contents (module docstring)."""
    kind = "pair" if entry in PAIR_ENTRIES else "single"
    metric = PRIMARY_METRIC[entry]
    labels = np.concatenate([fold["label"] for fold in saved])
    groups = np.concatenate([[f"{i}/{t}" for t in fold["trajectory"]] for i, fold in enumerate(saved)])
    scorers = [*INITS, *baselines]
    outcomes = {name: np.concatenate([row_outcomes(kind, fold[f"answer_{name}" if name in INITS
                                                               else BASELINE_SCORES_PREFIX + name], fold["label"])
                                      for fold in saved]) for name in scorers}
    counts = np.stack([np.bincount(rows, minlength=labels.size)
                       for rows in bootstrap_resamples(labels.size, n_resamples, seed, groups)])
    ones = np.ones((1, labels.size))
    values = {name: float(primary_by_counts(metric, kind, outcomes[name], labels, ones)[0]) for name in scorers}
    resampled = {name: primary_by_counts(metric, kind, outcomes[name], labels, counts) for name in scorers}
    best = max(baselines, key=values.__getitem__, default=None)
    pooled: dict[str, Any] = {
        "metric": metric, "rows": int(labels.size), "trajectories": int(np.unique(groups).size),
        "rows_per_fold": [int(fold["label"].size) for fold in saved], "same_inputs_baselines": baselines,
        "scores": {name: {"value": values[name], "ci95": percentile_interval(resampled[name])} for name in scorers},
        "best_baseline": best,
    }
    for init in INITS:
        if best is not None:
            pooled[f"{init}_margin"] = values[init] - values[best]
            pooled[f"{init}_margin_ci95"] = percentile_interval(resampled[init] - resampled[best])
            pooled[f"{init}_beats"] = pooled[f"{init}_margin"] >= 0
    return pooled


def pool_folds(folders: Sequence[str | Path], seed: int = 0, n_resamples: int = N_RESAMPLES) -> dict[str, Any]:
    """The pooled report of the k fold runs in `folders` (module docstring)."""
    folders = [Path(folder) for folder in folders]
    reports = []
    for folder in folders:
        if not (folder / REPORT_FILE).is_file():
            raise FileNotFoundError(f"No {REPORT_FILE} in {folder}: pass the output folders of run_finetune.py "
                                    "--compare --num_folds k --test_fold f.")
        reports.append(json.loads((folder / REPORT_FILE).read_text()))
    entries = list(reports[0]["tasks"])
    tasks = {}
    for entry in entries:
        paths = [folder / entry / TEST_SCORES_FILE for folder in folders]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"No test scores {', '.join(missing)}: every fold must run the same --tasks with "
                                    "a trajfm that saves them (run those folds again).")
        saved = []
        for path in paths:
            with np.load(path) as fold:
                saved.append({key: fold[key] for key in fold.files})
        _check_partition(folders, entry, [fold["trajectory"] for fold in saved])
        tasks[entry] = pool_entry(entry, saved, _same_inputs_baselines(reports, entry), seed, n_resamples)
        tasks[entry]["fold_margins"] = [report["tasks"][entry]["same_inputs"]["pretrained_margin"]
                                        for report in reports]
        tasks[entry]["answer_forms"] = {init: [report["tasks"][entry][init].get("answer_form", "classifier")
                                               for report in reports] for init in INITS}
    return {"folds": [str(folder) for folder in folders], "tasks": tasks,
            "bootstrap": {"resamples": n_resamples, "seed": seed, "confidence": 0.95,
                          "method": "percentile bootstrap over the pooled test rows' anchor trajectories, the same "
                                    "resamples for every scorer of an entry (margins paired)"}}


def _interval(ci: list[float] | None, sign: bool = False) -> str:
    form = "{:+.3f}" if sign else "{:.3f}"
    return "" if ci is None else f" [{form.format(ci[0])}, {form.format(ci[1])}]"


def folds_markdown(report: dict[str, Any]) -> str:
    """The pooled report as a Markdown table."""
    k = len(report["folds"])
    lines = [f"# {k} folds pooled ({', '.join(report['folds'])})", "",
             "Every trajectory tested once; [95% bootstrap interval over anchor trajectories]; margin = pre-trained "
             "minus the best baseline that sees the same inputs on the pooled rows (paired interval).", "",
             "| entry (metric) | rows | pre-trained | random init | best same-inputs baseline | margin, pre-trained | "
             "folds where pre-trained ≥ baseline |", "|---|---|---|---|---|---|---|"]
    for entry, task in report["tasks"].items():
        scores, best = task["scores"], task["best_baseline"]
        cells = [f"{scores[name]['value']:.3f}{_interval(scores[name]['ci95'])}" for name in INITS]
        baseline = "n/a" if best is None else f"{scores[best]['value']:.3f}{_interval(scores[best]['ci95'])} {best}"
        margin = ("n/a" if best is None
                  else f"{task['pretrained_margin']:+.3f}{_interval(task['pretrained_margin_ci95'], sign=True)}")
        at_or_above = sum(m is not None and m >= 0 for m in task["fold_margins"])
        lines.append(f"| {entry} ({task['metric']}) | {task['rows']} | {cells[0]} | {cells[1]} | {baseline} | "
                     f"{margin} | {at_or_above} / {k} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Pool the k fold runs of run_finetune.py --compare --num_folds k.")
    parser.add_argument("folders", nargs="+", help="Output folders of the runs, one per --test_fold.")
    parser.add_argument("--output_dir", required=True, help="Where folds_report.{json,md} are written.")
    parser.add_argument("--seed", type=int, default=0, help="Bootstrap seed.")
    args = parser.parse_args(argv)
    report = pool_folds(args.folders, args.seed)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "folds_report.json").write_text(json.dumps(report, indent=1))
    (output / "folds_report.md").write_text(folds_markdown(report))
    print(folds_markdown(report))
    return report


__all__ = ["folds_markdown", "main", "pool_entry", "pool_folds"]


if __name__ == "__main__":
    main()
