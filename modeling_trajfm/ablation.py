"""Ablations of pre-training choices, decided on VALIDATION data.

Each variant (`AblationRow`: extra `run_mtm.py` arguments) is pre-trained once per seed (`run_ablation`), and its
frozen encoder probed against a random-init encoder of the same config (`validation_probes`: the frozen-encoder
probes of `downstream.probes`, settings fixed in `PROBE_SETTINGS`) on the validation split of the held-out users'
user-linking and destination tasks. No test split is read, so a default chosen here leaves the test figures of
`compare` an unbiased measurement.

`run_ablation` writes `ablation_results.json` (every run) and `ablation_table.md` (mean ± std over seeds per row) after
every run, so an interrupted study still has a table, and skips the runs already done, so it can be continued.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shlex
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .downstream.builders import PreparedTask, TaskConfig
from .downstream.compare import INITS
from .downstream.probes import DESTINATION, LINKING, PROBE_SETTINGS, frozen_probes
from .finetuning import load_encoder, load_task_data
from .pretraining import pretrain_from_argv
from .run_guard import argument_defaults

logger = logging.getLogger(__name__)

RESULTS_FILE = "ablation_results.json"
TABLE_FILE = "ablation_table.md"
PROBES_FILE = "validation_probes.json"
#: Files of a run's checkpoint kept beside its probes when the checkpoint itself is deleted.
KEPT_FILES = ("all_results.json", "trainer_state.json", "trajfm_corpus.json")
#: Probe figure → (task entry, probe) whose accuracy@1 it is.
FIGURES = {"linking_prototype": (LINKING, "retrieval_prototype"), "linking_knn": (LINKING, "retrieval_knn"),
           "destination_linear": (DESTINATION, "linear_probe")}
#: Pre-training figures of a run, from its metrics and trainer state.
RUN_FIGURES = ("init_eval_perplexity", "eval_perplexity", "steps", "pretrain_seconds")


# ------------------------------------------------------------------------------------------------------ probes
def validation_view(task: PreparedTask) -> PreparedTask:
    """A copy of `task` whose query side (`test`, what the probes score) is its validation split. The baselines were
    fitted for and scored on the real test split, so they are dropped, not carried over or recomputed."""
    if not task.validation.get("label"):
        raise ValueError(f"{task.name}: no validation examples to probe on; use a TaskConfig with a larger "
                         "validation_fraction, or more held-out users.")
    return dataclasses.replace(task, test=task.validation, validation={}, baselines={}, baseline_scores={})


def _figures(probes: dict[str, dict[str, dict[str, dict[str, float]]]]) -> dict[str, float]:
    """accuracy@1 of every figure for both inits, and pre-trained minus random."""
    out = {}
    for name, (entry, probe) in FIGURES.items():
        for init in INITS:
            out[f"{name}_{init}"] = probes[init][entry][probe]["accuracy@1"]
        out[f"{name}_difference"] = out[f"{name}_pretrained"] - out[f"{name}_random"]
    return out


def validation_probes(model_path: str, seeds: Sequence[int], output_dir: str | Path,
                      task_config: TaskConfig | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Frozen-encoder probes of the checkpoint and of a random-init encoder of its config (seeded), with the
    VALIDATION split of the held-out users' tasks as queries, for each split seed of `seeds`.

    The held-out trajectories are loaded once (`finetuning.load_task_data`); each seed splits them anew
    (`TaskConfig.test_fraction`, `validation_fraction`) and also seeds the random init and the linear probe.
    Returns (and writes to `output_dir/validation_probes.json`) `{"seeds": {seed: figures}, "mean": figures}`, where
    figures are the accuracy@1 of linking by prototype and kNN and of the destination linear probe, for both inits
    and their difference (`FIGURES`); per seed also the query counts and every probe metric.
    """
    if not seeds:
        raise ValueError("validation_probes needs at least one seed.")
    task_config = task_config or TaskConfig()
    data = load_task_data(model_path, task_config)
    per_seed: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        tasks = {entry: validation_view(task)
                 for entry, task in data.build_tasks((LINKING, DESTINATION), task_config, seed).items()}
        probes = {init: frozen_probes(load_encoder(model_path, data.base_config, init, seed), data.tokenizer, tasks,
                                      seed, batch_size) for init in INITS}
        per_seed[str(seed)] = {**_figures(probes),
                               "validation_queries": {entry: len(task.test["label"]) for entry, task in tasks.items()},
                               "probes": probes}
    keys = [key for key in per_seed[str(seeds[0])] if key not in ("validation_queries", "probes")]
    result = {"model_path": str(model_path), "split": "validation", "task_config": asdict(task_config),
              "probe_settings": PROBE_SETTINGS, "seeds": per_seed,
              "mean": {key: float(np.mean([figures[key] for figures in per_seed.values()])) for key in keys}}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / PROBES_FILE).write_text(json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------------------------------------------- ablation
@dataclass
class AblationRow:
    """One pre-training variant: its name in the table and the `run_mtm.py` arguments it adds to the study's base."""

    name: str
    args: list[str] = field(default_factory=list)


@dataclass
class AblationArguments:
    """What `run_ablation.py` runs: base arguments, rows, seeds, where."""

    rows: str | None = field(  # an argument file may give the mapping itself
        default=None,
        metadata={"help": "Rows: a YAML/JSON file, or an inline YAML/JSON mapping, of row name → run_mtm.py arguments "
                          "(a string in shell syntax, or a list), e.g. '{\"vocab 300\": \"--vocab_size 300\"}'."},
    )
    base_args: str = field(
        default="",
        metadata={"help": "run_mtm.py arguments of every run, in shell syntax (--base_args=\"--data f.csv ...\"); "
                          "fix --split_seed so every run holds out the same users."},
    )
    seeds: list[int] = field(
        default_factory=lambda: [42],
        metadata={"help": "Seeds; each run's pre-training --seed and its probes' split seed."},
    )
    output_dir: str = field(default="ablation", metadata={"help": "Where results, table and runs are written."})
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "Keep every run's checkpoint (default: deleted after probing)."}
    )

    def __post_init__(self):
        if self.rows is None:
            raise ValueError("--rows is required: a file or inline mapping of row name → run_mtm.py arguments.")
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed.")


def _existing_file(text: str | Path) -> Path | None:
    """`text` as a path if it names a file; None otherwise, also where it is too long to be a file name (an inline
    mapping of several rows easily is)."""
    try:
        path = Path(text)
        return path if path.is_file() else None
    except OSError:
        return None


def load_rows(rows: str | Path | Mapping[str, Any]) -> list[AblationRow]:
    """Rows from a mapping of row name → arguments (a string in shell syntax, or a list), given as is, as a YAML/JSON
    file, or as an inline YAML/JSON string."""
    if not isinstance(rows, Mapping):
        path = _existing_file(rows)
        if path is None and Path(rows).suffix in (".yaml", ".yml", ".json"):
            raise ValueError(f"Rows file {rows} does not exist.")
        import yaml

        mapping = yaml.safe_load(str(rows) if path is None else path.read_text())
        if isinstance(mapping, dict) and isinstance(mapping.get("rows"), Mapping):
            raise ValueError(f"{rows} is an argument file of run_ablation.py (it holds rows and more): run "
                             f"python run_ablation.py {rows} [overrides].")
        rows = mapping
    if not isinstance(rows, Mapping) or not rows:
        raise ValueError(f"Rows {rows!r} must be a file, or an inline mapping, of row name → run_mtm.py arguments, "
                         "e.g. '{\"vocab 300\": \"--vocab_size 300\"}'.")
    out = []
    for name, args in rows.items():
        if args is not None and not isinstance(args, (str, list)):
            raise ValueError(f"Row {name!r}: arguments must be a string or a list, got {args!r}.")
        out.append(AblationRow(str(name), shlex.split(args) if isinstance(args, str) else [str(a) for a in args or []]))
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "row"


def _run_dir(output_dir: str | Path, name: str, seed: int) -> Path:
    return Path(output_dir) / "runs" / f"{_slug(name)}-seed{seed}"


def _run_args(study: dict[str, Any], name: str, seed: int) -> list[str]:
    """The run_mtm.py arguments that decide what one run computes: base, row, seed (not where it is written)."""
    return [*study["base_args"], *study["rows"][name], "--seed", str(seed)]


#: `TaskConfig` fields that only fine-tuning reads: a recorded run stays current when they change or were added later.
FINETUNING_ONLY_FIELDS = ("contrastive_steps", "linking_contrastive_steps", "answer_form", "profile_fusion")


def _probing_key(probing: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the frozen-encoder probes depend on: the probing record without `FINETUNING_ONLY_FIELDS`, a `TaskConfig`
    field recorded before it existed taken at its default (what the run computed)."""
    if probing is None:
        return None
    recorded = {**argument_defaults(TaskConfig), **probing.get("task_config", {})}
    tasks = {k: v for k, v in recorded.items() if k not in FINETUNING_ONLY_FIELDS}
    return {**probing, "task_config": tasks}


def _is_current(study: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether a recorded run is this study's run of its (row, seed): same run_mtm.py arguments, same probing."""
    return (record.get("run_args") == _run_args(study, record["row"], record["seed"])
            and _probing_key(record.get("probing")) == _probing_key(study["probing"]))


def _row_command(row: AblationRow, seeds: Sequence[int], base_args: Sequence[str], output_dir: Path) -> str:
    """The `run_ablation.py` command that runs exactly this row (pre-training and probes, every seed)."""
    rows = json.dumps({row.name: shlex.join(row.args)})
    return (f"python run_ablation.py --base_args={shlex.quote(shlex.join(base_args))} --rows {shlex.quote(rows)} "
            f"--seeds {' '.join(map(str, seeds))} --output_dir {shlex.quote(str(output_dir))}")


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {float(np.std(values, ddof=1)):.2g}"


def ablation_markdown(study: dict[str, Any]) -> str:
    """`ablation_table.md`: one row per AblationRow of the study, mean ± std (sample std) over its finished seeds."""
    columns = [*RUN_FIGURES, *(f"{name}_{part}" for name in FIGURES for part in (*INITS, "difference"))]
    header = ["row", "seeds", "failed", *columns, "command"]
    lines = [
        "# Pre-training ablation (validation data)", "",
        f"Base `run_mtm.py` arguments: `{shlex.join(study['base_args'])}`; seeds {study['seeds']} (each seeds the "
        "pre-training init and masks, the probes' task split and random init, and the linear probe).",
        "Probes: frozen encoders, pre-trained vs random init of the same config, acc@1 on the VALIDATION split of the "
        f"held-out users' tasks (test never read); settings `{json.dumps(study['probing']['probe_settings'])}`. "
        "Perplexity: MTM validation perplexity per sub-token (init → end), comparable only between runs with the same "
        "vocabulary. Resolution changes the tasks themselves (cells of another size): compare its differences, not "
        "its accuracies.",
        "Cells: mean ± sample std over the seeds that finished.", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
    ]
    failures = []
    for name, args in study["rows"].items():
        runs = [r for r in study["runs"] if r["row"] == name and r["seed"] in study["seeds"] and _is_current(study, r)]
        done = [r for r in runs if r["status"] == "ok"]
        failed = [r for r in runs if r["status"] != "ok"]
        failures += failed
        cells = [_mean_std([r[key] for r in done if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])])
                 for key in columns]
        command = _row_command(AblationRow(name, args), study["seeds"], study["base_args"], Path(study["output_dir"]))
        lines.append("| " + " | ".join([name, str(len(done)), str(len(failed)), *cells, f"`{command}`"]) + " |")
    if failures:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r['row']} (seed {r['seed']}): {r['error'].splitlines()[0] if r['error'] else '?'}"
                  for r in failures]
    return "\n".join(lines) + "\n"


def _save(study: dict[str, Any], output_dir: Path) -> None:
    (output_dir / RESULTS_FILE).write_text(json.dumps(study, indent=1))
    (output_dir / TABLE_FILE).write_text(ablation_markdown(study))


def _pretrain_and_probe(argv: list[str], seed: int, run_dir: Path, checkpoint: Path, record: dict[str, Any],
                        task_config: TaskConfig | None) -> None:
    """Pre-train with `pretrain_from_argv(argv)` (what `python run_mtm.py ARGV` runs) and probe the checkpoint on
    validation, filling `record` as it goes (a failure keeps what was measured before it)."""
    started = time.perf_counter()
    result = pretrain_from_argv(argv)
    record["pretrain_seconds"] = time.perf_counter() - started
    record["eval_perplexity"] = result.metrics.get("eval_perplexity")
    record["init_eval_perplexity"] = result.metrics.get("init_eval_perplexity")
    state = checkpoint / "trainer_state.json"
    record["steps"] = json.loads(state.read_text())["global_step"] if state.is_file() else None
    record["pretrain_metrics"] = result.metrics
    for name in KEPT_FILES:
        if (checkpoint / name).is_file():
            shutil.copy(checkpoint / name, run_dir / name)
    del result  # the model and datasets
    started = time.perf_counter()
    probes = validation_probes(str(checkpoint), [seed], run_dir, task_config)
    record["probe_seconds"] = time.perf_counter() - started
    record.update(probes["mean"])
    record["validation_queries"] = probes["seeds"][str(seed)]["validation_queries"]


def run_ablation(rows: Sequence[AblationRow], seeds: Sequence[int], base_args: Sequence[str],
                 output_dir: str | Path, keep_checkpoints: bool = False, task_config: TaskConfig | None = None
                 ) -> dict[str, Any]:
    """Pre-train every row with every seed (`pretrain_from_argv(base_args + row.args + ["--seed", seed, "--output_dir",
    ...])`) and probe each checkpoint on validation (`validation_probes`, split seed = that seed).

    `base_args` should fix `--split_seed`, so every run holds out the same users. After every run
    `ablation_results.json` and `ablation_table.md` are rewritten in `output_dir`. Runs already in the results with
    the same arguments and probing (`task_config`, `PROBE_SETTINGS`) are skipped; failed ones are retried. A run that
    fails (e.g. an argument run_mtm does not know) is recorded with its error and the study goes on. Checkpoints are
    deleted after probing unless `keep_checkpoints` (their metrics stay in the results and the run's folder).
    Returns the study (the JSON's content).
    """
    if not rows or not seeds:
        raise ValueError("run_ablation needs at least one row and one seed.")
    slugs = [_slug(row.name) for row in rows]
    if len(set(slugs)) < len(slugs):
        raise ValueError(f"Row names must be distinct as folder names, got {slugs}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    previous = json.loads((output_dir / RESULTS_FILE).read_text()) if (output_dir / RESULTS_FILE).is_file() else {}
    study = {"output_dir": str(output_dir), "base_args": list(base_args), "seeds": list(seeds),
             "rows": {row.name: list(row.args) for row in rows},
             "probing": {"task_config": asdict(task_config or TaskConfig()), "probe_settings": PROBE_SETTINGS},
             "runs": previous.get("runs", [])}
    study_started = time.perf_counter()
    todo = [(row, seed) for seed in seeds for row in rows]  # seed-major: a full table with one seed first
    for index, (row, seed) in enumerate(todo, 1):
        run_dir = _run_dir(output_dir, row.name, seed)
        checkpoint = run_dir / "checkpoint"
        run_args = _run_args(study, row.name, seed)
        argv = [*run_args, "--output_dir", str(checkpoint), "--overwrite_output_dir"]  # a fresh folder of the study
        same = [r for r in study["runs"] if r["row"] == row.name and r["seed"] == seed]
        if any(r["status"] == "ok" and _is_current(study, r) for r in same):
            print(f"[ablation {index}/{len(todo)}] {row.name} seed {seed}: done before, skipped", flush=True)
            continue
        record: dict[str, Any] = {"row": row.name, "seed": seed, "run_args": run_args, "argv": argv,
                                  "command": shlex.join(["python", "run_mtm.py", *argv]), "probing": study["probing"]}
        started = time.perf_counter()
        try:
            _pretrain_and_probe(argv, seed, run_dir, checkpoint, record, task_config)
            record["status"], record["error"] = "ok", None
        except (Exception, SystemExit) as error:  # argparse exits on some bad arguments: that row fails, not the study
            why = "argument error, printed on stderr" if isinstance(error, SystemExit) else error
            record["status"], record["error"] = "failed", f"{type(error).__name__}: {why}"
            logger.exception("Ablation run %s (seed %d) failed", row.name, seed)
        record["seconds"] = time.perf_counter() - started
        if not keep_checkpoints:
            shutil.rmtree(checkpoint, ignore_errors=True)
        study["runs"] = [r for r in study["runs"] if r not in same] + [record]
        _save(study, output_dir)
        print(f"[ablation {index}/{len(todo)}] {row.name} seed {seed}: {record['status']} in {record['seconds']:.0f}s "
              f"(study {time.perf_counter() - study_started:.0f}s)", flush=True)
    _save(study, output_dir)
    return study


__all__ = ["AblationArguments", "AblationRow", "ablation_markdown", "load_rows", "run_ablation", "validation_probes",
           "validation_view"]
