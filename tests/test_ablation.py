"""The ablation runner (modeling_trajfm.ablation, run_ablation.py): probes on validation only, pre-trained minus random,
results and a mean ± std table after every run, resume, a failing row that does not stop the study."""

from __future__ import annotations

import json
import shlex
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_CORPUS_ARGS

sys.path.insert(0, str(REPO))

import run_ablation  # noqa: E402
from modeling_trajfm import ablation  # noqa: E402
from modeling_trajfm.ablation import (  # noqa: E402
    FIGURES,
    AblationArguments,
    AblationRow,
    load_rows,
    validation_probes,
    validation_view,
)
from modeling_trajfm.arguments import parse_arguments  # noqa: E402
from modeling_trajfm.downstream import TaskConfig  # noqa: E402
from modeling_trajfm.downstream.probes import DESTINATION, LINKING  # noqa: E402
from modeling_trajfm.finetuning import load_encoder, load_task_data  # noqa: E402
from modeling_trajfm.pretraining import parse_pretraining_arguments  # noqa: E402

BASE_ARGS = [*TINY_CORPUS_ARGS, "--heldout_fraction", "0.5", "--split_seed", "0", "--hidden_size", "32",
             "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "64", "--vocab_size",
             "150", "--max_seq_length", "64", "--per_device_train_batch_size", "8", "--max_steps", "4",
             "--eval_steps", "2", "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu",
             "--dataloader_num_workers", "0", "--report_to", "none"]
ROWS = {"unknown argument": "--no_such_argument 1", "default": ""}
SEEDS = [1, 2]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The linear probe's tiny full-batch steps are all thread hand-offs on a shared 2-core machine (75x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------------ probes
def _tasks(path: str, seed: int) -> dict:
    return load_task_data(path, TaskConfig()).build_tasks((LINKING, DESTINATION), TaskConfig(), seed)


def test_validation_view_queries_validation_and_drops_test_baselines(tiny_checkpoint):
    task = _tasks(str(tiny_checkpoint["path"]), 0)[LINKING]
    view = validation_view(task)
    assert view.test is task.validation and view.train is task.train and view.validation == {}
    assert view.baselines == {} and view.baseline_scores == {} and task.baselines  # the original is untouched
    task.validation = {"label": []}
    with pytest.raises(ValueError, match="no validation examples"):
        validation_view(task)


def test_validation_probes_never_query_test(tiny_checkpoint, tmp_path, monkeypatch):
    path = str(tiny_checkpoint["path"])
    calls = []

    def spy(model, tokenizer, tasks, seed, batch_size=64):
        out = real(model, tokenizer, tasks, seed, batch_size)
        calls.append((model, tasks, seed, out))
        return out

    real = ablation.frozen_probes
    monkeypatch.setattr(ablation, "frozen_probes", spy)
    result = validation_probes(path, [0, 1], tmp_path)
    assert [seed for *_, seed, _ in calls] == [0, 0, 1, 1]  # pre-trained, then random, per seed
    for seed in (0, 1):
        (pretrained, tasks, _, pretrained_out), (random, random_tasks, _, random_out) = calls[2 * seed: 2 * seed + 2]
        assert tasks is random_tasks
        reference = _tasks(path, seed)
        for entry in (LINKING, DESTINATION):
            queried, truth = tasks[entry], reference[entry]
            assert queried.test["traj_id"] == truth.validation["traj_id"] and queried.test["label"]
            assert queried.train["traj_id"] == truth.train["traj_id"]
            assert not set(queried.test["traj_id"]) & set(truth.test["traj_id"])
            assert not set(queried.train["traj_id"]) & set(truth.test["traj_id"])
        weight = "encoder.layer.0.attention.self.query.weight"
        checkpoint = load_encoder(path, load_task_data(path, TaskConfig()).base_config, "pretrained", seed)
        fresh = load_encoder(path, checkpoint.config, "random", seed)
        assert torch.equal(pretrained.state_dict()[weight], checkpoint.state_dict()[weight])
        assert torch.equal(random.state_dict()[weight], fresh.state_dict()[weight])  # seeded by the split seed
        if seed:  # the fixture checkpoint is itself an untrained init with seed 0
            assert not torch.equal(pretrained.state_dict()[weight], random.state_dict()[weight])
        figures = result["seeds"][str(seed)]
        for name, (entry, probe) in FIGURES.items():
            assert figures[f"{name}_pretrained"] == pretrained_out[entry][probe]["accuracy@1"]
            assert figures[f"{name}_random"] == random_out[entry][probe]["accuracy@1"]
            assert figures[f"{name}_difference"] == pytest.approx(figures[f"{name}_pretrained"]
                                                                  - figures[f"{name}_random"])
        assert figures["validation_queries"] == {e: len(reference[e].validation["label"]) for e in reference}
    for key, value in result["mean"].items():
        assert value == pytest.approx(np.mean([result["seeds"][s][key] for s in ("0", "1")]))
    assert json.loads((tmp_path / "validation_probes.json").read_text())["mean"] == result["mean"]


# ------------------------------------------------------------------------------------------------ the study
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The script end to end: a failing row first, then a tiny real row, two seeds. Records, at every pre-training
    call, how many runs the results file already held."""
    out = tmp_path_factory.mktemp("ablation") / "study"
    rows_file = out.parent / "rows.yaml"
    rows_file.write_text("".join(f"{name}: {json.dumps(args)}\n" for name, args in ROWS.items()))
    seen = []

    def counting(argv, callbacks=None):
        results = out / ablation.RESULTS_FILE
        seen.append(len(json.loads(results.read_text())["runs"]) if results.is_file() else 0)
        return real(argv, callbacks)

    real = ablation.pretrain_from_argv
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ablation, "pretrain_from_argv", counting)
        result = run_ablation.main([f"--base_args={shlex.join(BASE_ARGS)}", "--rows", str(rows_file), "--seeds",
                                    *map(str, SEEDS), "--output_dir", str(out)])
    return out, result, seen


def _runs(study_dict, row):
    return [r for r in study_dict["runs"] if r["row"] == row]


def test_results_and_table_after_every_run(study):
    out, result, seen = study
    assert seen == [0, 1, 2, 3]  # the results file grew by one run before each next run
    assert json.loads((out / "ablation_results.json").read_text()) == result
    runs = _runs(result, "default")
    assert [r["seed"] for r in runs] == SEEDS and all(r["status"] == "ok" for r in runs)
    for r in runs:
        assert r["steps"] == 4 and 1 < r["eval_perplexity"] and 1 < r["init_eval_perplexity"]
        assert r["pretrain_seconds"] > 0 and r["argv"][-5:] == ["--seed", str(r["seed"]), "--output_dir",
                                                                 r["argv"][-2], "--overwrite_output_dir"]
        assert r["command"].startswith("python run_mtm.py --synthetic_users")
        for name in FIGURES:
            assert r[f"{name}_difference"] == pytest.approx(r[f"{name}_pretrained"] - r[f"{name}_random"])
        run_dir = out / "runs" / f"default-seed{r['seed']}"
        assert not (run_dir / "checkpoint").exists()  # deleted after probing, its metrics kept
        assert {"all_results.json", "trainer_state.json", "validation_probes.json"} <= {
            p.name for p in run_dir.iterdir()}
    table = (out / "ablation_table.md").read_text()
    line = next(line for line in table.splitlines() if line.startswith("| default |"))
    cells = [cell.strip() for cell in line.strip("|").split(" | ")]
    assert cells[1:3] == ["2", "0"]  # seeds finished, failed
    perplexities = [r["eval_perplexity"] for r in runs]
    expected = f"{np.mean(perplexities):.4g} ± {np.std(perplexities, ddof=1):.2g}"
    header = next(line for line in table.splitlines() if line.startswith("| row |"))
    header = [cell.strip() for cell in header.strip("|").split(" | ")]
    assert cells[header.index("eval_perplexity")] == expected


def test_a_failing_row_is_recorded_and_the_others_run(study):
    out, result, _ = study
    failed = _runs(result, "unknown argument")
    assert [r["status"] for r in failed] == ["failed", "failed"]
    assert all("--no_such_argument" in r["error"] for r in failed)
    table = (out / "ablation_table.md").read_text()
    assert "| unknown argument | 0 | 2 |" in table and "## Failed runs" in table
    assert "- unknown argument (seed 1): ValueError: Some specified arguments" in table


def test_table_command_reproduces_the_row(study):
    out, result, _ = study
    line = next(line for line in (out / "ablation_table.md").read_text().splitlines() if "| default |" in line)
    command = shlex.split(line.rsplit("`", 2)[-2])
    assert command[:2] == ["python", "run_ablation.py"]
    (args,), _ = parse_arguments((AblationArguments,), command[2:])
    assert shlex.split(args.base_args) == BASE_ARGS and args.seeds == SEEDS and args.output_dir == str(out)
    assert load_rows(args.rows) == [AblationRow("default", [])]


def test_a_long_inline_mapping_is_read_as_rows():
    """Longer than a file name may be: still rows, not an OS error."""
    rows = {f"row {i} with a long descriptive name": f"--contrastive_weight {i} --contrastive_positives user"
            for i in range(8)}
    assert len(json.dumps(rows)) > 300
    assert load_rows(json.dumps(rows)) == [AblationRow(name, shlex.split(args)) for name, args in rows.items()]


def test_resume_skips_finished_runs(study, tmp_path, monkeypatch, capsys):
    out, result, _ = study
    moved = tmp_path / "moved"  # where a study is written does not change what its runs compute
    shutil.copytree(out, moved)
    calls = []

    def failing(argv, callbacks=None):
        calls.append(argv)
        raise ValueError("not run")

    monkeypatch.setattr(ablation, "pretrain_from_argv", failing)
    again = ablation.run_ablation(load_rows(ROWS), SEEDS, BASE_ARGS, moved)
    assert len(calls) == 2 and all("--no_such_argument" in argv for argv in calls)  # only failed runs retried
    assert _runs(again, "default") == _runs(result, "default")
    assert capsys.readouterr().out.count("done before, skipped") == 2
    calls.clear()
    ablation.run_ablation(load_rows(ROWS), SEEDS, BASE_ARGS, moved, task_config=TaskConfig(contrastive_steps=7,
                                                                                           answer_form="classifier"))
    assert len(calls) == 2  # fields that only fine-tuning reads leave the probes' runs current
    calls.clear()
    recorded = json.loads((moved / ablation.RESULTS_FILE).read_text())
    for record in recorded["runs"]:  # runs recorded before a probe-relevant field existed
        del record["probing"]["task_config"]["destination_user_context"]
    (moved / ablation.RESULTS_FILE).write_text(json.dumps(recorded))
    ablation.run_ablation(load_rows(ROWS), SEEDS, BASE_ARGS, moved)
    assert len(calls) == 2  # ... stay current at its default
    calls.clear()
    ablation.run_ablation(load_rows(ROWS), SEEDS, BASE_ARGS, moved, task_config=TaskConfig(
        destination_user_context=True))
    assert len(calls) == 4  # ... and are re-run when the study asks for another value
    calls.clear()
    ablation.run_ablation(load_rows(ROWS), SEEDS, BASE_ARGS, moved, task_config=TaskConfig(validation_fraction=0.3))
    assert len(calls) == 4  # other probing: nothing done before


# ------------------------------------------------------------------------------------------------------- rows
def test_rows_inline_list_file_and_errors(tmp_path):
    assert load_rows('{"vocab 300": "--vocab_size 300", "base": ""}') == [
        AblationRow("vocab 300", ["--vocab_size", "300"]), AblationRow("base", [])]
    assert load_rows({"a": ["--mlm_probability", 0.3]}) == [AblationRow("a", ["--mlm_probability", "0.3"])]
    (tmp_path / "rows.json").write_text(json.dumps({"t": "--utc_offset_minutes -240 --use_time_embeddings"}))
    assert load_rows(tmp_path / "rows.json")[0].args == ["--utc_offset_minutes", "-240", "--use_time_embeddings"]
    with pytest.raises(ValueError, match="does not exist"):
        load_rows(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="must be a file, or an inline mapping"):
        load_rows("--vocab_size 300")
    with pytest.raises(ValueError, match="must be a string or a list"):
        load_rows({"a": {"b": 1}})
    with pytest.raises(ValueError, match="argument file of run_ablation.py"):
        load_rows(REPO / "configs" / "ablation_nyc.yaml")
    with pytest.raises(ValueError, match="distinct as folder names"):
        ablation.run_ablation([AblationRow("a b"), AblationRow("a/b")], [1], [], tmp_path)


def test_nyc_config_parses():
    (args,), _ = parse_arguments((AblationArguments,), [str(REPO / "configs" / "ablation_nyc.yaml"), "--seeds", "7"])
    base = shlex.split(args.base_args)
    assert args.seeds == [7] and base[base.index("--split_seed") + 1] == "42" and "--save_strategy" in base
    rows = load_rows(args.rows)
    assert len(rows) == 26 and rows[0].args == [] and rows[8].args == ["--contrastive_weight", "0.5"]
    assert rows[11].args[-2:] == ["--contrastive_positives", "user"]
    # Every row is a valid run_mtm.py command line (parsed and checked, not run; the embedded data for NYC's file).
    data = base.index("--data")
    assert base[data + 2] == "--reader"
    local = base[:data] + base[data + 4 :]
    for row in rows:
        parse_pretraining_arguments([*local, *row.args, "--output_dir", str(REPO / "unused")])
