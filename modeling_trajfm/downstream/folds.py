"""k-fold over the held-out users' trajectories, pooled: every trajectory tested once, so each entry's figures, its
margin to the best same-inputs baseline and the average-F1 improvement rest on all the test rows of k runs instead
of one run's 100-444.

Each run of `run_finetune.py --compare --num_folds k --test_fold f` (same `--data_seed`) tests on fold f, and every
compare writes `<entry>/test_scores.npz` beside its report (`compare.save_test_scores`): each test row's anchor
trajectory, labels and classes, and the test scores of both inits' answers and classifiers and of every baseline.
This module pools the k runs:

    for f in 0 1 2 3 4; do
        python run_finetune.py configs/nyc_compare.yaml --num_folds 5 --test_fold $f --output_dir nyc-fold$f
    done
    python -m modeling_trajfm.downstream.folds nyc-fold0 nyc-fold1 nyc-fold2 nyc-fold3 nyc-fold4 --output_dir nyc-folds

It rebuilds each entry's test side from the k folds' rows (`pooled_task`) and hands it to `compare.compare_report`,
so the pooled `compare_report.{json,md,png}` has the schema of any compare: every metric of both inits (the answers
and, as `classifier_*`, the classifiers: the paper's protocol) and of every baseline, bootstrap intervals, the
same-inputs verdict with its paired margin interval and the average-F1 improvements. Destination's folds rank their
own candidate cells (each fold's training destinations): the pooled rows rank the union, a fold's scores -inf on the
cells it could not predict and its labels as they were, so a destination outside a fold's candidates stays wrong.
Each fold's answer keeps the form, checkpoint and thresholds its own validation chose. The frozen probes (user linking
by nearest neighbours, destination's linear probe) are pooled the same way from their saved test scores, with the
paired interval of pre-trained minus random init (`compare.probe_intervals`), when every fold saved them.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .builders import PreparedTask, task_metrics
from .compare import (
    BASELINE_SCORES_PREFIX,
    INITS,
    POOLED_COLUMNS,
    PROBE_SCORES_PREFIX,
    TEST_SCORES_FILE,
    compare_markdown,
    compare_plot,
    compare_report,
)
from .examples import IGNORE_INDEX
from .seeds import REPORT_FILE
from .stats import N_RESAMPLES


def _task_config(folder: Path, entry: str) -> dict[str, Any]:
    """The task settings of the run that wrote `folder/entry`."""
    return json.loads((folder / entry / INITS[0] / "task_report.json").read_text())["task_config"]


def _check_partition(folders: Sequence[Path], entry: str, trajectories: list[np.ndarray]) -> None:
    """The folders must be the k folds of one k-fold: k runs of the same task settings, folds 0..k-1, disjoint test
    trajectories (folds of another `--data_seed` would overlap)."""
    configs = [_task_config(folder, entry) for folder in folders]
    folds = [config.get("test_fold", 0) for config in configs]
    k = configs[0].get("num_folds")
    if k is None or sorted(folds) != list(range(k)):
        raise ValueError(f"{entry}: the folders hold folds {folds} of --num_folds "
                         f"{sorted({config.get('num_folds') for config in configs}, key=str)}; pass the runs of "
                         "every fold 0..k-1 of one k-fold (run_finetune.py --num_folds k --test_fold f, the same "
                         "--data_seed).")
    settings = [{key: value for key, value in config.items() if key != "test_fold"} for config in configs]
    differ = sorted({key for other in settings[1:] for key in other if other[key] != settings[0].get(key)})
    if differ:
        raise ValueError(f"{entry}: the folds ran with different task settings ({', '.join(differ)}); run every "
                         "fold with the same arguments but --test_fold.")
    seen: set[int] = set()
    for folder, rows in zip(folders, trajectories):
        anchors = set(rows.tolist())
        if anchors & seen:
            raise ValueError(f"{entry}: {folder} tests trajectories another fold tests too; its folds come from "
                             "another --data_seed or other data. Run every fold with the same arguments.")
        seen |= anchors


def _scores(saved: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A fold's score matrices by scorer: `answer_<init>`, `classifier_<init>`, the baselines' names and the probes'
    `PROBE_SCORES_PREFIX` keys."""
    return {key.removeprefix(BASELINE_SCORES_PREFIX): value for key, value in saved.items()
            if key.startswith(("answer_", "classifier_", BASELINE_SCORES_PREFIX, PROBE_SCORES_PREFIX))}


def _on_candidates(saved: dict[str, np.ndarray], union: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A destination fold's labels and scores over the `union` of the folds' candidate cells: its scores -inf on the
    cells it did not rank, a label outside its own candidates still `IGNORE_INDEX` (wrong)."""
    columns = np.searchsorted(union, saved["candidates"])
    labels = np.where(saved["label"] >= 0, columns[np.maximum(saved["label"], 0)], IGNORE_INDEX)
    scores = {}
    for name, matrix in _scores(saved).items():
        full = np.full((matrix.shape[0], union.size), -np.inf)
        full[:, columns] = matrix
        scores[name] = full
    return labels, scores


def pooled_task(entry: str, saved: list[dict[str, np.ndarray]], inputs: str, baseline_inputs: dict[str, str]
                ) -> tuple[PreparedTask, dict[str, np.ndarray]]:
    """The entry's test side rebuilt from its folds' `TEST_SCORES_FILE` contents (`saved`, in fold order) with the
    baselines' pooled scores set (`baseline_inputs`: each baseline's inputs), and the pooled scores of
    `answer_<init>` / `classifier_<init>`."""
    kind = str(saved[0]["kind"])
    if kind == "hexagon":
        union = np.unique(np.concatenate([fold["candidates"] for fold in saved]))
        remapped = [_on_candidates(fold, union) for fold in saved]
        labels, by_fold = [labels for labels, _ in remapped], [scores for _, scores in remapped]
        names = [format(int(cell), "x") for cell in union]
    else:
        if len({tuple(fold["label_names"].tolist()) for fold in saved}) > 1:
            raise ValueError(f"{entry}: the folds have different classes; pool the folds of one k-fold.")
        union, labels, by_fold = np.zeros(0, np.uint64), [fold["label"] for fold in saved], list(map(_scores, saved))
        names = saved[0]["label_names"].tolist()
    test: dict[str, list] = {"label": np.concatenate(labels).tolist()}
    for name in POOLED_COLUMNS[1:]:
        if all(name in fold for fold in saved):
            test[name] = np.concatenate([fold[name] for fold in saved]).tolist()
    if kind == "pair":  # rows resampled together (`compare.row_groups`): the anchor trajectory, told apart by fold
        test["traj_id_a"] = [f"{i}/{t}" for i, fold in enumerate(saved) for t in fold["trajectory"]]
    info = {"folds": len(saved), "test_examples": len(test["label"]),
            "test_examples_per_fold": [int(fold["label"].size) for fold in saved]}
    models = {f"{scorer}_{init}" for scorer in ("answer", "classifier") for init in INITS}
    dropped = sorted(name for name in set().union(*by_fold) - models - set(baseline_inputs)
                     if not name.startswith(PROBE_SCORES_PREFIX))
    if dropped:
        info["baselines_not_in_every_fold"] = dropped
    task = PreparedTask(entry, kind, {}, test, names, info, candidates=union.tolist(), inputs=inputs)
    pooled = {name: np.concatenate([scores[name] for scores in by_fold]) for name in by_fold[0]
              if all(name in scores for scores in by_fold)}
    task.set_baselines({name: pooled.pop(name) for name in baseline_inputs})
    for name, row in task.baselines.items():
        row["inputs"] = baseline_inputs[name]
    return task, pooled


def _answered_by(forms: list[str]) -> str:
    """The folds' answering forms, counted: "classifier 3, similarity 2"."""
    return ", ".join(f"{form} {count}" for form, count in Counter(forms).most_common())


def pool_folds(folders: Sequence[str | Path], seed: int = 0, n_resamples: int = N_RESAMPLES) -> dict[str, Any]:
    """The pooled compare report of the k fold runs in `folders` (module docstring), with `folds` (the folders) and,
    per entry, `fold_margins` (each fold's pre-trained margin to its best same-inputs baseline)."""
    folders = [Path(folder) for folder in folders]
    reports = []
    for folder in folders:
        if not (folder / REPORT_FILE).is_file():
            raise FileNotFoundError(f"No {REPORT_FILE} in {folder}: pass the output folders of run_finetune.py "
                                    "--compare --num_folds k --test_fold f.")
        reports.append(json.loads((folder / REPORT_FILE).read_text()))
    tasks, results, answers, classifiers = {}, {}, {}, {}
    probe_scores: dict[str, dict[str, dict[str, np.ndarray]]] = {init: {} for init in INITS}
    for entry, first in reports[0]["tasks"].items():
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
        # a baseline some fold lacks (time gap: a fold without visit times) is not pooled
        in_every_fold = [name for name in first["baselines"] if all(name in report["tasks"][entry]["baselines"]
                                                                     for report in reports)]
        task, pooled = pooled_task(entry, saved, first["inputs"],
                                   {name: first["baselines"][name]["inputs"] for name in in_every_fold})
        tasks[entry], answers[entry], classifiers[entry], results[entry] = task, {}, {}, {}
        for init in INITS:
            answers[entry][init], classifiers[entry][init] = pooled[f"answer_{init}"], pooled[f"classifier_{init}"]
            metrics = task_metrics(task, answers[entry][init])
            metrics |= {f"classifier_{k}": v for k, v in task_metrics(task, classifiers[entry][init]).items()}
            metrics["answer_form"] = _answered_by([report["tasks"][entry][init].get("answer_form", "classifier")
                                                  for report in reports])
            results[entry][init] = {f"test_{k}": v for k, v in metrics.items()}
            prefix = f"{PROBE_SCORES_PREFIX}{init}_"
            by_probe = {key.removeprefix(prefix): scores for key, scores in pooled.items() if key.startswith(prefix)}
            if by_probe:
                probe_scores[init][entry] = by_probe
    report = compare_report(results, tasks, answers, seed=seed, n_resamples=n_resamples, classifier_logits=classifiers,
                            probe_scores=probe_scores)
    report["folds"] = [str(folder) for folder in folders]
    for entry, task in report["tasks"].items():
        task["fold_margins"] = [fold["tasks"][entry]["same_inputs"]["pretrained_margin"] for fold in reports]
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Pool the k fold runs of run_finetune.py --compare --num_folds k "
                                                 "into one compare report.")
    parser.add_argument("folders", nargs="+", help="Output folders of the runs, one per --test_fold.")
    parser.add_argument("--output_dir", required=True, help="Where compare_report.{json,md,png} are written.")
    parser.add_argument("--seed", type=int, default=0, help="Bootstrap seed.")
    args = parser.parse_args(argv)
    report = pool_folds(args.folders, args.seed)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    markdown = f"# {len(report['folds'])} folds pooled ({', '.join(report['folds'])})\n\n" + compare_markdown(report)
    (output / REPORT_FILE).write_text(json.dumps(report, indent=1, default=str))
    (output / "compare_report.md").write_text(markdown)
    compare_plot(report, output / "compare_report.png")
    print(markdown)
    return report


__all__ = ["main", "pool_folds", "pooled_task"]


if __name__ == "__main__":
    main()
