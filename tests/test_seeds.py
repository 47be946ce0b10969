"""Across-split summaries of compare reports (`modeling_trajfm.downstream.seeds`)."""

import json
import math

import pytest

from modeling_trajfm.downstream.seeds import across_splits, main, seeds_summary, student_t_quantile

LINKING = "user_association_linking"


@pytest.mark.parametrize(("dof", "tabled"), [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)])
def test_student_t_quantile_matches_tables(dof, tabled):
    assert student_t_quantile(0.975, dof) == pytest.approx(tabled, abs=1e-3)


def test_student_t_quantile_shrinks_towards_normal_and_checks_arguments():
    quantiles = [student_t_quantile(0.975, dof) for dof in (1, 3, 10, 100)]
    assert quantiles == sorted(quantiles, reverse=True)
    assert quantiles[-1] == pytest.approx(1.984, abs=1e-3)
    with pytest.raises(ValueError, match="probability"):
        student_t_quantile(0.4, 3)
    with pytest.raises(ValueError, match="dof"):
        student_t_quantile(0.975, 0)


def test_across_splits_mean_std_and_t_interval():
    summary = across_splits([0.1, 0.2, None, 0.3])
    assert summary["n"] == 3 and summary["values"] == [0.1, 0.2, None, 0.3]
    assert summary["mean"] == pytest.approx(0.2) and summary["std"] == pytest.approx(0.1)
    half = 4.303 * 0.1 / math.sqrt(3)
    assert summary["ci95"] == pytest.approx([0.2 - half, 0.2 + half], abs=1e-4)
    single = across_splits([0.5])
    assert single["mean"] == 0.5 and single["std"] is None and single["ci95"] is None
    assert across_splits([None])["mean"] is None


def _report(linking: float, baseline: float, improvement: float, probe: float) -> dict:
    """The part of a `compare_report.json` the summary reads: one linking entry and one frozen probe."""
    return {
        "tasks": {LINKING: {
            "split": {"test_examples": 100},
            "pretrained": {"accuracy@1": linking, "answer_form": "retrieval_prototype"},
            "random": {"accuracy@1": linking - 0.1},
            "same_inputs": {"metric": "accuracy@1", "best_baseline": "cell_profile_knn",
                            "best_baseline_value": baseline, "pretrained_margin": linking - baseline,
                            "random_margin": linking - 0.1 - baseline},
        }},
        "avg_f1_improvement_pct": improvement,
        "probes": {"tasks": {LINKING: {"retrieval_prototype": {"pretrained": {"accuracy@1": 0.8 + probe},
                                                               "random": {"accuracy@1": 0.8}}}}},
    }


def test_seeds_summary_counts_margins_per_split():
    summary = seeds_summary({"a": _report(0.90, 0.94, 10.0, 0.02), "b": _report(0.95, 0.93, 20.0, 0.04),
                             "c": _report(0.91, 0.90, 30.0, -0.01)})
    task = summary["tasks"][LINKING]
    assert task["metric"] == "accuracy@1" and task["test_examples"] == [100, 100, 100]
    assert task["pretrained"]["mean"] == pytest.approx(0.92)
    assert task["pretrained_margin"]["values"] == pytest.approx([-0.04, 0.02, 0.01])
    assert task["pretrained_beats"] == 2 and task["random_beats"] == 0
    assert task["answer_forms"] == {"pretrained": ["retrieval_prototype"] * 3, "random": ["classifier"] * 3}
    low, high = task["pretrained_margin"]["ci95"]
    assert low < task["pretrained_margin"]["mean"] < high
    assert summary["improvement_pct"]["avg_f1_improvement_pct"]["mean"] == pytest.approx(20.0)
    assert summary["improvement_pct"]["avg_f1_improvement_pct_paper_tasks"]["n"] == 0
    assert summary["frozen_linking_probe_difference"]["retrieval_prototype"]["values"] == pytest.approx(
        [0.02, 0.04, -0.01])


def test_seeds_summary_refuses_one_report_and_different_entries():
    with pytest.raises(ValueError, match="at least two"):
        seeds_summary({"a": _report(0.9, 0.9, 1.0, 0.0)})
    other = _report(0.9, 0.9, 1.0, 0.0)
    other["tasks"] = {"destination": other["tasks"].pop(LINKING)}
    with pytest.raises(ValueError, match="same --tasks"):
        seeds_summary({"a": _report(0.9, 0.9, 1.0, 0.0), "b": other})
    dated = _report(0.9, 0.9, 1.0, 0.0)
    del dated["tasks"][LINKING]["same_inputs"]
    with pytest.raises(ValueError, match=rf"b: entries \['{LINKING}'\] have no `same_inputs`.*older trajfm"):
        seeds_summary({"a": _report(0.9, 0.9, 1.0, 0.0), "b": dated})


def test_main_writes_json_and_markdown(tmp_path):
    folders = []
    for seed, linking in ((42, 0.89), (43, 0.93)):
        folder = tmp_path / f"compare-{seed}"
        folder.mkdir()
        (folder / "compare_report.json").write_text(json.dumps(_report(linking, 0.92, 5.0, 0.01)))
        folders.append(str(folder))
    summary = main([*folders, "--output_dir", str(tmp_path / "seeds")])
    written = json.loads((tmp_path / "seeds" / "seeds_report.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["tasks"][LINKING]["pretrained_beats"] == 1
    markdown = (tmp_path / "seeds" / "seeds_report.md").read_text()
    assert "| user_association_linking (accuracy@1) | 0.910 ± 0.028" in markdown and "1 / 2" in markdown
    with pytest.raises(FileNotFoundError, match="run_finetune.py"):
        main([folders[0], str(tmp_path), "--output_dir", str(tmp_path / "seeds")])
