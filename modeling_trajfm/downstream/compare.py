"""The pre-trained vs random-init comparison report (JSON, Markdown, bar chart) and its average-F1 formula:

    avg_f1_improvement_pct = 100 * (mean_t F1_pretrained(t) - mean_t F1_random(t)) / mean_t F1_random(t)

over the report's task entries t, with F1 = binary F1 (next_subtrajectory, user_association_binary) or macro-F1
(destination, user_association_linking): the relative improvement of the average F1, as the paper's "33.6 % better in
average F1". `avg_f1_improvement_pct_paper_tasks` is the same over the paper's three tasks (binary association).
When entries are answered by a form other than the classifier (`downstream.forms`),
`avg_f1_improvement_pct_classifier` (and `_paper_tasks_classifier`) apply the formula to the classifiers' F1
(`classifier_*` metrics): the paper's protocol, where both inits are fine-tuned as classifiers.

Confidence intervals (`downstream.stats`): per entry, `ci95[scorer][metric]` = [lo, hi] for the entry's primary
metric and primary F1, for both inits and every baseline, from a seeded percentile bootstrap over the test examples
(pair tasks: over anchor trajectories, each with all its pairs). Every scorer of an entry is evaluated on the same
resamples. The improvement's interval is a paired bootstrap: resample b draws one resample per entry, both inits
are scored on it, and the formula above is applied to those F1s; the interval is the percentiles over b. Given the
classifiers' test logits of entries another form answers, `ci95[init]["classifier_<metric>"]` and the
`avg_f1_improvement_pct[_paper_tasks]_classifier_ci95` intervals come from the same resamples.

Each entry says what its model sees (`inputs`) and compares it only with the baselines that see nothing more
(`same_inputs`: "beats" means beats those); with logits, `same_inputs[f"{init}_margin_ci95"]` is the paired
interval of init minus the best of those baselines on the primary metric (same resamples). The optional `probes`
section holds the frozen-encoder probes of `downstream.probes`, pre-trained vs random init; given their test scores,
with intervals on the entry's resamples and the paired interval of pre-trained minus random (`probe_intervals`).
`save_test_scores` keeps each entry's test rows and scores (`TEST_SCORES_FILE`), so that `downstream.folds` can pool
the runs of a k-fold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .builders import PRIMARY_METRIC, PreparedTask
from .metrics import binary_metrics, macro_f1, true_class_ranks
from .probes import LINKING, PROBE_SETTINGS, probe_metrics
from .stats import N_RESAMPLES, bootstrap_resamples, percentile_interval

INITS = ("pretrained", "random")
PAPER_TASKS = ("next_subtrajectory", "destination", "user_association_binary")
#: The F1 each report entry contributes to the average (macro-F1 for multi-class tasks).
PRIMARY_F1 = {
    "next_subtrajectory": "f1",
    "destination": "macro_f1",
    "user_association_linking": "macro_f1",
    "user_association_binary": "f1",
}
#: The metric that decides whether the model beats the baselines that see the same inputs: the primary one.
BEATS_METRIC = PRIMARY_METRIC
LOWER_IS_BETTER = ("distance_km_mean", "distance_km_median", "loss")
#: The probe metrics given intervals (`probe_intervals`): the retrieval and linear-probe metrics the report leads with.
PROBE_CI_METRICS = ("accuracy@1", "macro_f1")
BOOTSTRAP_METHOD = ("percentile bootstrap over test examples (pair tasks: anchor trajectories with all their pairs), "
                    "the same resamples for every scorer of a task; improvement: paired, one resample per task")
AVG_F1_FORMULA = ("100 * (mean_t F1_pretrained(t) - mean_t F1_random(t)) / mean_t F1_random(t); F1 = binary F1 for "
                  "pair tasks, macro-F1 for destination and user linking")


def primary_f1(entry: str, metrics: dict[str, float], form: str | None = None) -> float:
    """The entry's primary F1 in `metrics`; with `form`, that form's (`{form}_macro_f1`, ...) when it was scored."""
    key = PRIMARY_F1[entry]
    return float(metrics.get(f"{form}_{key}", metrics[key]) if form else metrics[key])


def is_lower_better(metric: str) -> bool:
    """Whether `metric` is one of `LOWER_IS_BETTER`, bare or a form's (`classifier_loss`, ...)."""
    return any(metric == name or metric.endswith(f"_{name}") for name in LOWER_IS_BETTER)


def relative_improvement(pre: float, rand: float, lower_is_better: bool = False) -> float | None:
    """100 * (pre - rand) / |rand| (sign flipped when lower is better); None when undefined."""
    if rand == 0 or not math.isfinite(rand) or not math.isfinite(pre):
        return None
    return 100.0 * ((rand - pre) if lower_is_better else (pre - rand)) / abs(rand)


def avg_f1_improvement(report_tasks: dict[str, dict], entries: Iterable[str], form: str | None = None
                       ) -> float | None:
    """100 * (mean F1 pretrained - mean F1 random) / mean F1 random over `entries` (see the module docstring), of the
    answers, or of `form` where an entry scored it."""
    entries = [e for e in entries if e in report_tasks]
    if not entries:
        return None
    pre = float(np.mean([primary_f1(e, report_tasks[e]["pretrained"], form) for e in entries]))
    rand = float(np.mean([primary_f1(e, report_tasks[e]["random"], form) for e in entries]))
    return relative_improvement(pre, rand)


def resampled_metrics(task: PreparedTask, scores: np.ndarray) -> Callable[[np.ndarray], dict[str, float]]:
    """`f(indices)` → the primary metric and primary F1 of `scores` (test, `(n, n_classes)`) on those test rows,
    equal to `task_metrics` on all rows; the per-row work (ranks, top-1) is done once, for fast bootstrapping."""
    labels = np.asarray(task.test["label"])
    scores = np.where(np.isnan(scores), -np.inf, np.asarray(scores, dtype=np.float64))
    top1 = scores.argmax(axis=1) if len(labels) else np.empty(0, dtype=np.int64)
    if task.kind == "pair":
        return lambda rows: binary_metrics(top1[rows], labels[rows])
    ranks = true_class_ranks(scores, labels)
    if task.kind == "hexagon":
        top1 = np.asarray(task.candidates, dtype=np.uint64)[top1]
        truth = np.asarray(task.test["destination"], dtype=np.uint64)
    else:
        truth = labels
    return lambda rows: {"accuracy@1": float((ranks[rows] <= 1).mean()) if rows.size else 0.0,
                         "macro_f1": macro_f1(top1[rows], truth[rows])}


def row_groups(task: PreparedTask, split: str = "test") -> list | None:
    """What the bootstrap resamples together in `split`: a pair task's anchor trajectory of each pair (its positive
    and negative pairs are not independent); None for tasks of one trajectory (rows resampled alone)."""
    return getattr(task, split).get("traj_id_a") if task.kind == "pair" else None


def resample_rows(task: PreparedTask, n_resamples: int, seed: int | list[int], split: str = "test"
                  ) -> list[np.ndarray]:
    """The bootstrap resamples of a task's rows of `split` (grouped by `row_groups`)."""
    return bootstrap_resamples(len(getattr(task, split)["label"]), n_resamples, seed, row_groups(task, split))


def entry_resamples(tasks: dict[str, PreparedTask], entries: Iterable[str], seed: int, n_resamples: int
                    ) -> dict[str, list[np.ndarray]]:
    """Each report entry's test resamples, seeded by `[seed, position of the entry]`: drawn once, shared by every
    scorer of the entry (answers, classifiers, baselines, frozen probes)."""
    return {entry: resample_rows(tasks[entry], n_resamples, [seed, index]) for index, entry in enumerate(entries)}


#: Per entry of a compare (`save_test_scores`): what `downstream.folds` needs to rebuild the entry's test side and
#: pool the runs of a k-fold. Keys: `kind`, `trajectory` (each row's anchor), the test columns of `POOLED_COLUMNS`,
#: `label_names`, `candidates`, `answer_<init>` and `classifier_<init>` scores, `BASELINE_SCORES_PREFIX + name` and,
#: for the entries with frozen probes, `PROBE_SCORES_PREFIX + f"{init}_{probe}"`.
TEST_SCORES_FILE = "test_scores.npz"
BASELINE_SCORES_PREFIX = "baseline_"
PROBE_SCORES_PREFIX = "probe_"
#: Test columns kept besides the scores: labels, destination's true cells, next sub-trajectory's negative kinds.
POOLED_COLUMNS = ("label", "destination", "difficulty")


def save_test_scores(path: Path, task: PreparedTask, answers: dict[str, np.ndarray],
                     classifiers: dict[str, np.ndarray], probes: dict[str, dict[str, np.ndarray]] | None = None
                     ) -> None:
    """Write `task`'s test side to `path` (`TEST_SCORES_FILE`): each row's anchor trajectory (a pair's segment A, else
    the row's own), the `POOLED_COLUMNS` it has, its classes, each init's answer and classifier scores, every
    baseline's scores and the frozen probes' (`probes[init][probe]`)."""
    trajectories = task.test["traj_id_a" if task.kind == "pair" else "traj_id"]
    columns = {name: np.asarray(task.test[name]) for name in POOLED_COLUMNS if name in task.test}
    if "destination" in columns:
        columns["destination"] = columns["destination"].astype(np.uint64)
    np.savez(path, kind=np.asarray(task.kind), trajectory=np.asarray(trajectories, dtype=np.int64), **columns,
             label_names=np.asarray(task.label_names, dtype=str), candidates=np.asarray(task.candidates, np.uint64),
             **{f"answer_{init}": np.asarray(scores, dtype=np.float64) for init, scores in answers.items()},
             **{f"classifier_{init}": np.asarray(scores, dtype=np.float64) for init, scores in classifiers.items()},
             **{BASELINE_SCORES_PREFIX + name: scores for name, scores in task.baseline_scores.items()},
             **{f"{PROBE_SCORES_PREFIX}{init}_{probe}": np.asarray(scores, dtype=np.float64)
                for init, by_probe in (probes or {}).items() for probe, scores in by_probe.items()})


def _bootstrap(results: dict[str, dict[str, dict]], tasks: dict[str, PreparedTask],
               logits: dict[str, dict[str, np.ndarray]], resamples: dict[str, list[np.ndarray]],
               classifier_logits: dict[str, dict[str, np.ndarray]] | None = None,
               best_baselines: dict[str, str | None] | None = None) -> dict[str, Any]:
    """ci95 per entry and scorer, and the paired intervals of the average-F1 improvements (module docstring); with
    `classifier_logits`, the classifiers' intervals too (`ci95[init]["classifier_<metric>"]`); with the entries'
    best same-inputs baselines, the paired interval of each init's margin to it (`margin_ci95[entry][init]`)."""
    ci, f1 = {}, {}  # f1[entry][scorer] = primary F1 per resample; scorer (init, "classifier") for the classifiers
    margins = {}  # margins[entry][init]: interval of init - best same-inputs baseline on the primary metric
    classifier_logits = classifier_logits or {}
    for entry in results:
        task = tasks[entry]
        scorers = {init: logits[entry][init] for init in INITS} | task.baseline_scores
        scorers |= {(init, "classifier"): scores for init, scores in classifier_logits.get(entry, {}).items()}
        metrics = sorted({PRIMARY_METRIC[entry], PRIMARY_F1[entry]})
        ci[entry], f1[entry], primary = {}, {}, {}
        for name, scores in scorers.items():
            statistic = resampled_metrics(task, scores)
            values = [statistic(rows) for rows in resamples[entry]]
            primary[name] = np.array([v[PRIMARY_METRIC[entry]] for v in values])
            intervals = {m: percentile_interval([v[m] for v in values]) for m in metrics}
            if isinstance(name, tuple):
                ci[entry][name[0]] |= {f"classifier_{m}": interval for m, interval in intervals.items()}
            else:
                ci[entry][name] = intervals
            f1[entry][name] = np.array([v[PRIMARY_F1[entry]] for v in values])
        best = (best_baselines or {}).get(entry)
        if best in primary:
            margins[entry] = {init: percentile_interval(primary[init] - primary[best]) for init in INITS}

    def improvement_ci(entries: Iterable[str], form: str | None = None) -> list[float] | None:
        entries = [e for e in entries if e in f1]
        if not entries:
            return None
        pre, rand = ([f1[e].get((init, form), f1[e][init]) for e in entries] for init in INITS)
        return percentile_interval([relative_improvement(p, r)
                                    for p, r in zip(np.mean(pre, axis=0), np.mean(rand, axis=0))])

    has_paper_tasks = all(e in results for e in PAPER_TASKS)
    out = {
        "ci95": ci,
        "margin_ci95": margins,
        "avg_f1_improvement_pct_ci95": improvement_ci(results),
        "avg_f1_improvement_pct_paper_tasks_ci95": improvement_ci(PAPER_TASKS) if has_paper_tasks else None,
    }
    if classifier_logits:
        out["avg_f1_improvement_pct_classifier_ci95"] = improvement_ci(results, "classifier")
        out["avg_f1_improvement_pct_paper_tasks_classifier_ci95"] = (
            improvement_ci(PAPER_TASKS, "classifier") if has_paper_tasks else None)
    return out


def comparable_baselines(model_inputs: str, baselines: dict[str, dict]) -> list[str]:
    """The baselines that see no input the model does not see (their `inputs` parts, joined by " + ", are among the
    model's; "none" = training labels only). A baseline without `inputs` is never comparable."""
    parts = set(model_inputs.split(" + "))
    return [name for name, row in baselines.items()
            if row.get("inputs") == "none" or set(str(row.get("inputs")).split(" + ")) <= parts]


def same_inputs_verdict(entry: str, inputs: str, by_init: dict[str, dict], baselines: dict[str, dict]
                        ) -> dict[str, Any]:
    """The best baseline with the same inputs on `BEATS_METRIC[entry]` and whether each init beats it (>=)."""
    metric = BEATS_METRIC[entry]
    names = [n for n in comparable_baselines(inputs, baselines) if metric in baselines[n]]
    best = max(names, key=lambda n: baselines[n][metric], default=None)
    verdict: dict[str, Any] = {"metric": metric, "baselines": names, "best_baseline": best,
                               "best_baseline_value": None if best is None else baselines[best][metric]}
    for init, metrics in by_init.items():
        margin = None if best is None or metric not in metrics else metrics[metric] - baselines[best][metric]
        verdict[f"{init}_margin"] = margin
        verdict[f"{init}_beats"] = None if margin is None else margin >= 0
    return verdict


def probe_intervals(tasks: dict[str, PreparedTask], probe_scores: dict[str, dict[str, dict[str, np.ndarray]]],
                    resamples: dict[str, list[np.ndarray]]) -> dict[str, Any]:
    """Bootstrap intervals of the frozen probes' test scores (`probe_scores[init][entry][probe]`) on their entries'
    `resamples` (`entry_resamples`, those of the answers): `ci95[entry][probe][init][metric]` for accuracy@1 and
    macro-F1, and the paired interval of pre-trained minus random accuracy@1 (`margin_ci95[entry][probe]`)."""
    ci: dict[str, dict] = {}
    margins: dict[str, dict] = {}
    for entry, by_probe in probe_scores[INITS[0]].items():
        task = tasks[entry]
        for probe in by_probe:
            values = {init: [resampled_metrics(task, probe_scores[init][entry][probe])(rows) for rows in
                             resamples[entry]] for init in INITS}
            ci.setdefault(entry, {})[probe] = {
                init: {metric: percentile_interval([v[metric] for v in rows]) for metric in PROBE_CI_METRICS}
                for init, rows in values.items()}
            margins.setdefault(entry, {})[probe] = percentile_interval(
                [pre["accuracy@1"] - rand["accuracy@1"] for pre, rand in zip(*(values[init] for init in INITS))])
    return {"ci95": ci, "margin_ci95": margins}


def probes_section(probes: dict[str, dict[str, dict[str, dict[str, float]]]],
                   intervals: dict[str, Any] | None = None) -> dict[str, Any]:
    """`probes[init][entry][probe]` = test metrics of a frozen encoder → the report's `probes` section, with the
    `probe_intervals` when given."""
    tasks: dict[str, dict[str, dict]] = {}
    for init, entries in probes.items():
        for entry, by_probe in entries.items():
            for probe, metrics in by_probe.items():
                tasks.setdefault(entry, {}).setdefault(probe, {})[init] = metrics
    better = {probe: rows["pretrained"]["accuracy@1"] > rows["random"]["accuracy@1"]
              for probe, rows in tasks.get(LINKING, {}).items() if set(INITS) <= set(rows)}
    return {"encoder": "frozen (no fine-tuning)", "settings": PROBE_SETTINGS, "tasks": tasks,
            "pretrained_better_nn_linking": better, **(intervals or {})}


def compare_report(results: dict[str, dict[str, dict]], tasks: dict[str, PreparedTask],
                   logits: dict[str, dict[str, np.ndarray]] | None = None, seed: int = 0,
                   n_resamples: int = N_RESAMPLES, classifier_logits: dict[str, dict[str, np.ndarray]] | None = None,
                   probe_scores: dict[str, dict[str, dict[str, np.ndarray]]] | None = None) -> dict[str, Any]:
    """`results[entry][init]` = test metrics (keys `test_*`) → the report (see the module docstring); with the test
    `logits[entry][init]` of the answers, bootstrap 95% intervals too (`seed`, `n_resamples`), and with the
    classifiers' test logits (`classifier_logits[entry][init]`, for entries another form answers) those of the
    classifier protocol; the frozen encoders' test scores (`probe_scores[init][entry][probe]`, `frozen_probe_scores`
    per init) add the `probes` section, with intervals when bootstrapping."""
    report_tasks = {}
    for entry, by_init in results.items():
        pre = {k.removeprefix("test_"): v for k, v in by_init["pretrained"].items()}
        rand = {k.removeprefix("test_"): v for k, v in by_init["random"].items()}
        improvement = {
            k: relative_improvement(pre[k], rand[k], is_lower_better(k))
            for k in pre if k in rand and isinstance(pre[k], float) and not k.endswith("samples")
        }
        report_tasks[entry] = {
            "primary_metric": PRIMARY_F1[entry],
            "selection_metric": PRIMARY_METRIC[entry],
            "pretrained": pre,
            "random": rand,
            "baselines": tasks[entry].baselines,
            "improvement_pct": improvement,
            "split": tasks[entry].info,
        }
        inputs = tasks[entry].inputs or "unknown"
        report_tasks[entry]["inputs"] = inputs
        report_tasks[entry]["same_inputs"] = same_inputs_verdict(entry, inputs, {"pretrained": pre, "random": rand},
                                                                 tasks[entry].baselines)
    report = {
        "tasks": report_tasks,
        "avg_f1_pretrained": float(np.mean([primary_f1(e, t["pretrained"]) for e, t in report_tasks.items()])),
        "avg_f1_random": float(np.mean([primary_f1(e, t["random"]) for e, t in report_tasks.items()])),
        "avg_f1_improvement_pct": avg_f1_improvement(report_tasks, report_tasks),
        "avg_f1_improvement_pct_paper_tasks": avg_f1_improvement(report_tasks, PAPER_TASKS)
        if all(e in report_tasks for e in PAPER_TASKS) else None,
        "avg_f1_formula": AVG_F1_FORMULA,
    }
    if any("answer_form" in t["pretrained"] for t in report_tasks.values()):
        report["avg_f1_improvement_pct_classifier"] = avg_f1_improvement(report_tasks, report_tasks, "classifier")
        report["avg_f1_improvement_pct_paper_tasks_classifier"] = (
            avg_f1_improvement(report_tasks, PAPER_TASKS, "classifier")
            if all(e in report_tasks for e in PAPER_TASKS) else None)
    resamples = entry_resamples(tasks, results, seed, n_resamples) if logits is not None else None
    if resamples is not None:
        best = {entry: t["same_inputs"]["best_baseline"] for entry, t in report_tasks.items()}
        intervals = _bootstrap(results, tasks, logits, resamples, classifier_logits, best)
        for entry, by_scorer in intervals.pop("ci95").items():
            report_tasks[entry]["ci95"] = by_scorer
        for entry, by_init in intervals.pop("margin_ci95").items():
            report_tasks[entry]["same_inputs"] |= {f"{init}_margin_ci95": ci for init, ci in by_init.items()}
        report.update(intervals)
        report["bootstrap"] = {"resamples": n_resamples, "seed": seed, "confidence": 0.95,
                               "method": BOOTSTRAP_METHOD}
    probes = {init: probe_metrics(tasks, scores) for init, scores in (probe_scores or {}).items()}
    if probes and all(probes.values()):
        intervals = probe_intervals(tasks, probe_scores, resamples) if resamples is not None else None
        report["probes"] = probes_section(probes, intervals)
    return report


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
                  "|---|---|---|---|" + "---|" * len(baselines),
                  f"| inputs | {t.get('inputs', 'n/a')} | {t.get('inputs', 'n/a')} | | "
                  + " | ".join(str(t["baselines"][b].get("inputs", "n/a")) for b in baselines) + " |"]
        ci = t.get("ci95", {})
        for metric, value in t["pretrained"].items():
            if not isinstance(value, float) or metric.endswith("samples"):
                continue
            improvement = t["improvement_pct"].get(metric)
            cells = [_fmt(value) + _fmt_ci(ci, "pretrained", metric),
                     _fmt(t["random"].get(metric)) + _fmt_ci(ci, "random", metric),
                     "n/a" if improvement is None else f"{improvement:+.1f}%"]
            cells += [_fmt(t["baselines"][b].get(metric)) + _fmt_ci(ci, b, metric) for b in baselines]
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        lines += ["", _same_inputs_line(t), ""]
        if "answer_form" in t["pretrained"]:
            lines[-1:-1] = ["Answered on test by the form chosen on validation (`form_selection`): "
                            + ", ".join(f"{init} {t[init].get('answer_form', 'classifier')}" for init in INITS)
                            + " (the `classifier_*` and other forms' rows show each form's test metrics).", ""]
    avg = report["avg_f1_improvement_pct"]
    paper = report.get("avg_f1_improvement_pct_paper_tasks")
    lines += [
        f"Average F1 over {len(report['tasks'])} task entries: pretrained {report['avg_f1_pretrained']:.4f}, "
        f"random {report['avg_f1_random']:.4f}, improvement "
        f"{'n/a' if avg is None else f'{avg:+.1f}%'}{_fmt_interval(report.get('avg_f1_improvement_pct_ci95'), '%')} "
        "(paper: +33.6%).",
        "",
        f"Formula: {report['avg_f1_formula']}.",
    ]
    if paper is not None:
        lines += ["", f"Over the paper's three tasks (binary user association): {paper:+.1f}%"
                      f"{_fmt_interval(report.get('avg_f1_improvement_pct_paper_tasks_ci95'), '%')}."]
    if "avg_f1_improvement_pct_classifier" in report:
        paper_classifier = report.get("avg_f1_improvement_pct_paper_tasks_classifier")
        parts = [f"{_fmt_pct(report['avg_f1_improvement_pct_classifier'])}"
                 f"{_fmt_interval(report.get('avg_f1_improvement_pct_classifier_ci95'), '%')} over all entries",
                 f"{_fmt_pct(paper_classifier)}"
                 f"{_fmt_interval(report.get('avg_f1_improvement_pct_paper_tasks_classifier_ci95'), '%')} over the "
                 "paper's three tasks"]
        lines += ["", "With the classifiers alone (the paper's protocol; entries answered by another form use "
                      f"their `classifier_*` F1): {', '.join(parts)}."]
    if "bootstrap" in report:
        b = report["bootstrap"]
        lines += ["", f"[lo, hi]: {100 * b['confidence']:.0f}% confidence intervals, {b['method']} "
                      f"({b['resamples']} resamples, seed {b['seed']})."]
    if "probes" in report:
        lines += ["", *_probes_markdown(report["probes"])]
    return "\n".join(lines) + "\n"


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def _fmt_interval(interval: list[float] | None, unit: str = "") -> str:
    if not interval:
        return ""
    if unit == "%":
        return f" [{interval[0]:+.1f}%, {interval[1]:+.1f}%]"
    if unit == "signed":
        return f" [{interval[0]:+.3f}, {interval[1]:+.3f}]"
    return f" [{interval[0]:.3f}, {interval[1]:.3f}]"


def _fmt_ci(ci: dict[str, dict[str, list[float] | None]], scorer: str, metric: str) -> str:
    return _fmt_interval(ci.get(scorer, {}).get(metric))


def _same_inputs_line(t: dict[str, Any]) -> str:
    verdict = t.get("same_inputs") or {}
    if verdict.get("best_baseline") is None:
        return "No baseline sees the same inputs as the model."
    metric, best = verdict["metric"], verdict["best_baseline"]
    parts = [f"{init} {'beats' if verdict[f'{init}_beats'] else 'is below'} it by {verdict[f'{init}_margin']:+.4f}"
             + _fmt_interval(verdict.get(f"{init}_margin_ci95"), "signed")
             for init in INITS if verdict.get(f"{init}_beats") is not None]
    return (f"Same inputs ({t['inputs']}): best baseline on {metric} is {best} "
            f"({verdict['best_baseline_value']:.4f}); " + ", ".join(parts) + ".")


def _with_interval(value: Any, intervals: dict[str, dict], init: str, metric: str) -> str:
    """`value`, followed by its 95% interval when `intervals[init][metric]` has one."""
    interval = intervals.get(init, {}).get(metric)
    return _fmt(value) + ("" if interval is None else f" [{interval[0]:.3f}, {interval[1]:.3f}]")


def _probes_markdown(probes: dict[str, Any]) -> list[str]:
    settings = ", ".join(f"{k} {v}" for k, v in probes["settings"].items())
    ci = probes.get("ci95", {})
    lines = ["## Probes: frozen encoders, no fine-tuning (what pre-training teaches)", "", f"Settings: {settings}.",
             "", "| task | probe | metric | pretrained | random | improvement |", "|---|---|---|---|---|---|"]
    for entry, by_probe in probes["tasks"].items():
        for probe, rows in by_probe.items():
            pre, rand = rows.get("pretrained", {}), rows.get("random", {})
            intervals = ci.get(entry, {}).get(probe, {})
            for metric, value in pre.items():
                improvement = relative_improvement(value, rand.get(metric, math.nan), is_lower_better(metric))
                pre_cell = _with_interval(value, intervals, "pretrained", metric)
                rand_cell = _with_interval(rand.get(metric), intervals, "random", metric)
                lines.append(f"| {entry} | {probe} | {metric} | {pre_cell} | {rand_cell} | "
                             + ("n/a" if improvement is None else f"{improvement:+.1f}%") + " |")
    for probe, better in probes["pretrained_better_nn_linking"].items():
        margin = probes.get("margin_ci95", {}).get(LINKING, {}).get(probe)
        lines += ["", f"Nearest-neighbour user linking ({probe}, accuracy@1): pre-trained frozen embeddings "
                      f"{'beat' if better else 'do not beat'} random-init ones"
                      + ("." if margin is None else
                         f"; pre-trained minus random, paired 95% interval [{margin[0]:+.3f}, {margin[1]:+.3f}].")]
    return lines


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
