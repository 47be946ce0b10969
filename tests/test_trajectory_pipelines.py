"""Trajectory pipelines from saved checkpoints, in-process and as remote code; complete checkpoints from any save
path; the usage snippets of the cards and the README run as written."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    pipeline,
)

from modeling_trajfm import (
    TrajBertForHexagonPrediction,
    TrajBertForMaskedTrajectoryModeling,
    TrajBertForSequenceClassification,
    TrajBertModel,
)
from modeling_trajfm.cards import FINETUNE_TEMPLATE, HUB_PIPELINE_TAGS, MTM_TEMPLATE
from modeling_trajfm.hub import render_model_card
from modeling_trajfm.modeling_trajbert import AUTO_MAP

T0 = 1_709_539_500
POINTS = [(40.7580, -73.9855, T0), (40.7527, -73.9772, T0 + 1500), (40.7484, -73.9857, T0 + 8700),
          (40.7306, -73.9866, T0 + 12000)]
CELLS = {"cells": ["882a100d67fffff", "882a100d2dfffff", "882a1072c1fffff"], "timestamps": [T0, T0 + 1500, T0 + 8700]}


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The MTM checkpoint and, built on it, a user-association classifier and a destination (hexagon) model."""
    root = tmp_path_factory.mktemp("heads")
    mtm = tiny_checkpoint["path"]
    tokenizer = AutoTokenizer.from_pretrained(mtm)
    torch.manual_seed(0)
    classifier = TrajBertForSequenceClassification.from_pretrained(
        mtm, num_labels=3, id2label={0: "alice", 1: "bob", 2: "carol"}, label2id={"alice": 0, "bob": 1, "carol": 2}
    )
    cells = ["882a100d67fffff", "882a100d2dfffff", "882a1072c1fffff", "882a100d15fffff"]
    hexagon = TrajBertForHexagonPrediction.from_pretrained(
        mtm, hexagon_candidates=tokenizer.cell_token_ids(cells), id2label=dict(enumerate(cells)),
        label2id={c: i for i, c in enumerate(cells)},
    )
    for name, model in (("cls", classifier), ("dest", hexagon)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return {"mtm": mtm, "cls": root / "cls", "dest": root / "dest"}


#: (checkpoint, task, input, call keyword arguments) of every pipeline, in-process and remote.
CASES = [
    ("mtm", "trajectory-fill-mask", [POINTS[0], None, *POINTS[2:]], {"top_k": 3}),
    ("mtm", "trajectory-fill-mask", {**CELLS, "cells": [CELLS["cells"][0], None, CELLS["cells"][2]]}, {"top_k": 3}),
    ("mtm", "trajectory-feature-extraction", [POINTS, CELLS], {}),
    ("mtm", "trajectory-feature-extraction", POINTS, {"per_hexagon": True}),
    ("dest", "trajectory-destination", [POINTS, CELLS], {"top_k": 2}),
    ("cls", "trajectory-classification", POINTS, {}),
    ("cls", "trajectory-classification", {"trajectory": POINTS[:2], "pair": POINTS[2:]}, {"top_k": 1}),
]


def run_cases(checkpoints: dict, **pipeline_kwargs) -> list:
    return [pipeline(task, model=str(checkpoints[ckpt]), **pipeline_kwargs)(inputs, **kwargs)
            for ckpt, task, inputs, kwargs in CASES]


def test_destination_and_classification_match_the_model(checkpoints):
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["dest"])
    model = AutoModelForSequenceClassification.from_pretrained(checkpoints["dest"]).eval()
    assert type(model) is TrajBertForHexagonPrediction  # the Auto class dispatches on `architectures`
    with torch.no_grad():
        probs = model(**tokenizer(POINTS, return_tensors="pt")).logits[0].softmax(-1)
    out = pipeline("trajectory-destination", model=str(checkpoints["dest"]))(POINTS, top_k=2)
    best = probs.topk(2)
    assert [p["cell"] for p in out] == [model.config.id2label[i] for i in best.indices.tolist()]
    assert [p["score"] for p in out] == pytest.approx(best.values.tolist())
    lat, lon = tokenizer.cell_coordinates([out[0]["cell"]])[0]
    assert (out[0]["latitude"], out[0]["longitude"]) == pytest.approx((lat, lon))

    labels = pipeline("trajectory-classification", model=str(checkpoints["cls"]))(POINTS)
    assert sorted(p["label"] for p in labels) == ["alice", "bob", "carol"]
    assert sum(p["score"] for p in labels) == pytest.approx(1.0)


def test_feature_extraction_is_the_mean_over_hexagon_tokens(checkpoints):
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["mtm"])
    batch = tokenizer(POINTS, return_tensors="pt")
    encoder = AutoModel.from_pretrained(checkpoints["mtm"]).eval()
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state[0]
    extract = pipeline("trajectory-feature-extraction", model=str(checkpoints["mtm"]))
    hexagons = batch["hexagon_ids"][0]
    assert extract(POINTS) == pytest.approx(hidden[hexagons > 0].mean(0).tolist(), abs=1e-6)
    detail = extract(POINTS, per_hexagon=True)
    assert detail["cells"] == tokenizer.decode_cells(batch["input_ids"][0])
    assert detail["hexagon_embeddings"][-1] == pytest.approx(hidden[hexagons == hexagons.max()].mean(0).tolist(),
                                                            abs=1e-6)
    assert len(extract([POINTS, CELLS, POINTS[:1]])) == 3


def test_fill_mask_scores_are_the_model_probabilities(checkpoints):
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["mtm"])
    model = TrajBertForMaskedTrajectoryModeling.from_pretrained(checkpoints["mtm"]).eval()
    cells = CELLS["cells"]
    fill = pipeline("trajectory-fill-mask", model=str(checkpoints["mtm"]))
    (result,) = fill({**CELLS, "cells": [cells[0], None, cells[2]]}, top_k=4)
    assert result["visit"] == 1 and len(result["predictions"]) == 4
    scores = [p["score"] for p in result["predictions"]]
    assert scores == sorted(scores, reverse=True)
    best = result["predictions"][0]["cell"]
    # the same probability by hand: the true trajectory with the best cell's sub-tokens masked
    batch = tokenizer(cells=[cells[0], best, cells[2]], timestamps=CELLS["timestamps"], return_tensors="pt")
    ids = batch["input_ids"][0].clone()
    masked = batch["hexagon_ids"][0] == 2
    batch["input_ids"][0, masked] = tokenizer.mask_token_id
    with torch.no_grad():
        probs = model(**batch).logits[0].softmax(-1)
    assert math.prod(probs[masked].gather(1, ids[masked, None]).squeeze(1).tolist()) == pytest.approx(scores[0])
    # points with a timed gap give one result per masked visit
    two = fill([POINTS[0], (None, None, T0 + 600), POINTS[2], None], top_k=2)
    assert [r["visit"] for r in two] == [1, 3]


@pytest.mark.parametrize("bad", ["a trajectory", ["882a100d67fffff", "882a100d2dfffff"]])
def test_text_input_is_refused_with_the_forms_to_use(checkpoints, bad):
    extract = pipeline("trajectory-feature-extraction", model=str(checkpoints["mtm"]))
    with pytest.raises(TypeError, match="not text.*'cells'"):
        extract(bad)


def test_fill_mask_needs_a_masked_and_a_known_visit(checkpoints):
    fill = pipeline("trajectory-fill-mask", model=str(checkpoints["mtm"]))
    with pytest.raises(ValueError, match="at least one visit"):
        fill(POINTS)


def test_checkpoints_list_only_the_pipelines_of_their_head(checkpoints):
    tasks = {name: set(json.loads((path / "config.json").read_text())["custom_pipelines"])
             for name, path in checkpoints.items()}
    assert tasks == {"mtm": {"trajectory-fill-mask", "trajectory-feature-extraction"},
                     "cls": {"trajectory-classification", "trajectory-feature-extraction"},
                     "dest": {"trajectory-destination", "trajectory-feature-extraction"}}
    assert all((path / "pipelines.py").is_file() for path in checkpoints.values())
    dest_map = json.loads((checkpoints["dest"] / "config.json").read_text())["auto_map"]
    assert dest_map["AutoModelForSequenceClassification"] == "modeling_trajbert.TrajBertForHexagonPrediction"


def test_plain_trainer_save_writes_a_complete_checkpoint(checkpoints, tmp_path):
    model = TrajBertForMaskedTrajectoryModeling.from_pretrained(checkpoints["mtm"])
    model.config.auto_map = None  # as a config built by hand, before any set_auto_map
    args = TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True)
    Trainer(model=model, args=args).save_model(str(tmp_path / "saved"))
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    assert set(config["custom_pipelines"]) == {"trajectory-fill-mask", "trajectory-feature-extraction"}
    assert {"modeling_trajbert.py", "configuration_trajbert.py", "pipelines.py"} <= {
        p.name for p in (tmp_path / "saved").iterdir()}


def test_auto_model_on_an_mtm_checkpoint_initialises_nothing(checkpoints):
    encoder, info = AutoModel.from_pretrained(checkpoints["mtm"], output_loading_info=True)
    assert type(encoder) is TrajBertModel and encoder.pooler is None
    assert not info["missing_keys"]
    with torch.no_grad():
        assert encoder(**AutoTokenizer.from_pretrained(checkpoints["mtm"])(POINTS, return_tensors="pt")).pooler_output \
            is None
    # a classifier's pooler is trained: AutoModel on its checkpoint keeps it
    encoder, info = AutoModel.from_pretrained(checkpoints["cls"], output_loading_info=True)
    assert encoder.pooler is not None and not info["missing_keys"]


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys

    # a user without the package: drop the editable install's import hook (the project may be pip install -e'd)
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    import importlib.util

    assert importlib.util.find_spec("modeling_trajfm") is None
    assert importlib.util.find_spec("tokenization_trajfm") is None
    from transformers import pipeline

    cases = json.load(open("cases.json"))
    out = []
    for ckpt, task, inputs, kwargs in cases:
        pipe = pipeline(task, model=ckpt, trust_remote_code=True)
        assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__
        out.append(pipe(inputs, **kwargs))
    assert "modeling_trajfm" not in sys.modules
    json.dump(out, open("outputs.json", "w"))
    """
)


def _jsonable(value):
    return json.loads(json.dumps(value, default=float))


def test_every_pipeline_through_remote_code_without_the_package(checkpoints, tmp_path):
    work = tmp_path / "fresh"
    work.mkdir()
    for name, path in checkpoints.items():
        shutil.copytree(path, work / name)
    (work / "cases.json").write_text(json.dumps([list(case) for case in CASES]))
    (work / "check.py").write_text(REMOTE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-I", "check.py"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = json.loads((work / "outputs.json").read_text())
    assert _close(remote, _jsonable(run_cases(checkpoints)))


def _close(a, b) -> bool:
    """Nested results equal, floats within 1e-5."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return abs(a - b) <= 1e-5
    return a == b


def _snippet(markdown: str, after: str) -> str:
    """The first ```python block after the heading `after`."""
    return re.search(r"```python\n(.*?)```", markdown[markdown.index(after):], re.S).group(1)


@pytest.mark.parametrize("template, fields, ckpt", [
    (MTM_TEMPLATE, {}, "mtm"),
    (FINETUNE_TEMPLATE, {"pipeline_task": "trajectory-destination", "pair": False}, "dest"),
    (FINETUNE_TEMPLATE, {"pipeline_task": "trajectory-classification", "pair": True}, "cls"),
    (FINETUNE_TEMPLATE, {"pipeline_task": "trajectory-classification", "pair": False}, "cls"),
])
def test_card_usage_snippet_runs(checkpoints, template, fields, ckpt, capsys):
    task = fields.get("pipeline_task", "trajectory-fill-mask")
    card = render_model_card(template, {}, model_name="m", repo_id=str(checkpoints[ckpt]),
                             pipeline_tag=HUB_PIPELINE_TAGS[task], tags=("trajfm", task), **fields)
    assert card.data.pipeline_tag == HUB_PIPELINE_TAGS[task] and task in card.data.tags
    code = _snippet(str(card), "## Use")
    assert f'pipeline("{task}"' in code
    exec(compile(code, "card-snippet", "exec"), {})
    assert capsys.readouterr().out.strip().startswith("[{")


def test_readme_pipelines_snippet_runs(checkpoints, capsys):
    code = _snippet((REPO / "README.md").read_text(), "## Pipelines")
    for name, ckpt in (("trajfm-base", "mtm"), ("nyc-destination", "dest"), ("nyc-users", "cls")):
        code = code.replace(f'"{name}"', repr(str(checkpoints[ckpt])))
    exec(compile(code, "readme-snippet", "exec"), {})
    assert capsys.readouterr().out.count("[{") >= 3
