"""How well each rule of `forms.choose_form` (`TaskConfig.form_selection`) picks an entry's answer, measured on
validation alone.

Every fine-tuned entry with forms beside the classifier saves each candidate's validation scores in
`forms.VALIDATION_SCORES_FILE`: the classifier's selected checkpoint and each form, with the labels and the pairs'
anchor trajectories. A rule is judged by what it picks on one half of the validation rows and how that pick scores on
the other half, over `halvings` random halvings per fine-tuned entry and init (pair entries split by anchor
trajectory). Test rows are never read:

    python -m modeling_trajfm.downstream.form_selection nyc-compare nyc-compare-seed43 --output_dir nyc-form-selection

The classifier's checkpoint and the fused forms' encoder weights were chosen on all of validation, so both halves
saw those choices; every rule is judged under the same handicap.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .builders import FORM_SELECTIONS, PAIR_ENTRIES, PRIMARY_METRIC, PreparedTask
from .compare import row_groups
from .forms import VALIDATION_SCORES_FILE, FormScores, choose_form, primary_by_resample
from .seeds import across_splits

#: Keys of `VALIDATION_SCORES_FILE` that are not candidates.
_COLUMNS = ("label", "group")


def load_validation_scores(path: Path, entry: str) -> tuple[PreparedTask, dict[str, np.ndarray]]:
    """A task holding only the validation rows of `path` (`save_validation_scores`), and the candidates' scores."""
    with np.load(path) as saved:
        candidates = {name: saved[name] for name in saved.files if name not in _COLUMNS}
        validation = {"label": saved["label"]}
        if entry in PAIR_ENTRIES:
            validation["traj_id_a"] = saved["group"]
    # Destination ranks its candidate cells as linking ranks users: the same rank metrics decide (accuracy@1, MRR).
    task = PreparedTask(entry, "pair" if entry in PAIR_ENTRIES else "single", {}, {}, [], validation=validation)
    return task, candidates


def _rows(task: PreparedTask, rows: np.ndarray) -> PreparedTask:
    return dataclasses.replace(task, validation={key: np.asarray(values)[rows]
                                                 for key, values in task.validation.items()})


def halving_scores(task: PreparedTask, candidates: dict[str, np.ndarray], halvings: int = 300, seed: int = 0
                   ) -> dict[str, dict[str, Any]]:
    """Per rule (`FORM_SELECTIONS`, and `classifier`: always the classifier): the primary metric on half B of the
    candidate the rule picks on half A, for each of `halvings` seeded halvings, and how often it picked each."""
    groups = row_groups(task, "validation")
    groups = np.arange(len(task.validation["label"])) if groups is None else np.asarray(groups)
    distinct = np.unique(groups)
    rng = np.random.default_rng(seed)
    rules = (*FORM_SELECTIONS, "classifier")
    scores = {rule: [] for rule in rules}
    picks = {rule: Counter() for rule in rules}
    for halving in range(halvings):
        in_a = np.isin(groups, rng.permutation(distinct)[: len(distinct) // 2])
        half_a, half_b = _rows(task, np.flatnonzero(in_a)), _rows(task, np.flatnonzero(~in_a))
        forms = {name: FormScores(values[in_a], values[~in_a]) for name, values in candidates.items()
                 if name != "classifier"}
        for rule in rules:
            pick = "classifier" if rule == "classifier" else choose_form(
                half_a, candidates["classifier"][in_a], forms, rule, seed=halving)[0]
            picks[rule][pick] += 1
            ones = np.ones((1, int((~in_a).sum())))
            scores[rule].append(float(primary_by_resample(half_b, candidates[pick][~in_a], ones)[0]))
    return {rule: {"mean": float(np.mean(scores[rule])), "picks": dict(picks[rule].most_common())} for rule in rules}


def evaluate_folders(folders: Sequence[str | Path], halvings: int = 300, seed: int = 0) -> dict[str, Any]:
    """`halving_scores` of every `<folder>/<entry>/<init>/VALIDATION_SCORES_FILE`, with each rule's mean over them
    and its difference to `best` across them (mean, std, Student-t interval)."""
    cells = []
    for folder in folders:
        found = sorted(Path(folder).glob(f"*/*/{VALIDATION_SCORES_FILE}"))
        if not found:
            raise FileNotFoundError(f"No */*/{VALIDATION_SCORES_FILE} in {folder}: pass output folders of "
                                    "run_finetune.py --compare whose entries have forms beside the classifier and "
                                    "validation data.")
        for path in found:
            entry, init = path.parent.parent.name, path.parent.name
            task, candidates = load_validation_scores(path, entry)
            cells.append({"folder": str(folder), "entry": entry, "init": init, "metric": PRIMARY_METRIC[entry],
                          "validation_rows": len(task.validation["label"]),
                          "rules": halving_scores(task, candidates, halvings, seed)})
    rules = list(cells[0]["rules"])
    summary = {rule: float(np.mean([cell["rules"][rule]["mean"] for cell in cells])) for rule in rules}
    difference = {rule: across_splits([cell["rules"][rule]["mean"] - cell["rules"]["best"]["mean"] for cell in cells])
                  for rule in rules if rule != "best"}
    by_entry = {entry: {rule: float(np.mean([c["rules"][rule]["mean"] for c in cells if c["entry"] == entry]))
                        for rule in rules} for entry in dict.fromkeys(cell["entry"] for cell in cells)}
    return {"halvings": halvings, "seed": seed, "mean_half_b": summary, "mean_half_b_by_entry": by_entry,
            "difference_to_best": difference, "cells": cells}


def selection_markdown(report: dict[str, Any]) -> str:
    """The report of `evaluate_folders` as Markdown: one row per fine-tuned entry and init, then the means."""
    rules = list(report["mean_half_b"])
    lines = [f"# Form selection on validation halves ({report['halvings']} halvings per cell)", "",
             "Each rule picks on half A of the validation rows; the figure is the pick's primary metric on half B.", "",
             "| folder | entry | init | rows | " + " | ".join(rules) + " |", "|---|---|---|---|" + "---|" * len(rules)]
    for cell in report["cells"]:
        lines.append(f"| {cell['folder']} | {cell['entry']} | {cell['init']} | {cell['validation_rows']} | "
                     + " | ".join(f"{cell['rules'][rule]['mean']:.4f}" for rule in rules) + " |")
    for entry, means in report["mean_half_b_by_entry"].items():
        lines.append(f"| mean | {entry} | | | " + " | ".join(f"{means[rule]:.4f}" for rule in rules) + " |")
    lines.append("| **mean** | all | | | " + " | ".join(f"**{report['mean_half_b'][rule]:.4f}**" for rule in rules)
                 + " |")
    lines += ["", "| rule minus best, across cells | mean | std | 95% interval |", "|---|---|---|---|"]
    for rule, value in report["difference_to_best"].items():
        interval = value["ci95"] and f"[{value['ci95'][0]:+.4f}, {value['ci95'][1]:+.4f}]"
        lines.append(f"| {rule} | {value['mean']:+.4f} | {value['std']:.4f} | {interval} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Compare the form-selection rules on halves of validation.")
    parser.add_argument("folders", nargs="+", help="Output folders of run_finetune.py --compare.")
    parser.add_argument("--output_dir", required=True, help="Where form_selection.{json,md} are written.")
    parser.add_argument("--halvings", type=int, default=300, help="Random halvings per fine-tuned entry and init.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = evaluate_folders(args.folders, args.halvings, args.seed)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "form_selection.json").write_text(json.dumps(report, indent=1))
    (output / "form_selection.md").write_text(selection_markdown(report))
    print(selection_markdown(report))
    return report


__all__ = ["evaluate_folders", "halving_scores", "load_validation_scores", "main", "selection_markdown"]


if __name__ == "__main__":
    main()
