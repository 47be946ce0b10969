"""The experiment configs of the Makefile's targets: copies of one recipe must not drift apart."""

from dataclasses import fields

import yaml
from conftest import REPO

from modeling_trajfm.pretraining import MTMArguments, MTMModelArguments
from tokenization_trajfm import CorpusConfig

CONFIGS = REPO / "configs"


def _config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def _make_recipes() -> list[str]:
    return (REPO / "Makefile").read_text().replace("\\\n", " ").splitlines()


def test_make_nyc_seen_uses_make_nyc_data_and_model():
    """`make nyc-seen` repeats `make nyc`'s data source (Makefile) and model and recipe (its own config, since a
    config's --data cannot be replaced by --train_file): the copies must not drift apart."""
    nyc, seen = _config("nyc_pretrain.yaml"), _config("nyc_seen_pretrain.yaml")
    source = {"data", "reader", "max_gap_minutes", "output_dir"}
    files = {"train_file", "validation_file", "output_dir", "gap_break_minutes"}
    assert {k: v for k, v in nyc.items() if k not in source} == {k: v for k, v in seen.items() if k not in files}
    assert seen["gap_break_minutes"] == nyc["max_gap_minutes"]  # the split files are cut where make nyc cuts
    recipes = _make_recipes()
    split_step = " ".join(next(line for line in recipes if "downstream.seen_users" in line).split())
    for key in ("data", "reader", "max_gap_minutes"):
        assert f"--{key} {nyc[key]}" in split_step


def test_make_geolife_keeps_the_nyc_recipe():
    """GeoLife is an out-of-sample check: its configs may differ from NYC's only in what describes the data."""
    nyc, geolife = _config("nyc_pretrain.yaml"), _config("geolife_pretrain.yaml")
    data = {"data", "reader", "max_gap_minutes", "utc_offset_minutes", "max_seq_length", "output_dir"}
    assert {k: v for k, v in nyc.items() if k not in data} == {k: v for k, v in geolife.items() if k not in data}
    nyc, geolife = _config("nyc_compare.yaml"), _config("geolife_compare.yaml")
    paths = {"model_name_or_path", "output_dir"}
    assert {k: v for k, v in nyc.items() if k not in paths} == {k: v for k, v in geolife.items() if k not in paths}
    assert geolife["model_name_or_path"] == _config("geolife_pretrain.yaml")["output_dir"]
    assert any("run_finetune.py configs/geolife_compare.yaml" in line for line in _make_recipes())


def test_make_geolife_transfer_continues_nyc_on_make_geolife_data():
    """`make geolife-transfer` continues make nyc's checkpoint on GeoLife as make geolife reads it (its data settings
    and training recipe; the model and tokenizer are the checkpoint's), and fine-tunes the checkpoint as it is on
    the same data and held-out users."""
    geolife, transfer = _config("geolife_pretrain.yaml"), _config("geolife_from_nyc_pretrain.yaml")
    checkpoint = {"vocab_size", "spelling", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "model_name_or_path", "output_dir"}
    assert {k: v for k, v in geolife.items() if k not in checkpoint} == {
        k: v for k, v in transfer.items() if k not in checkpoint}
    assert transfer["model_name_or_path"] == _config("nyc_pretrain.yaml")["output_dir"]
    recipes = _make_recipes()
    data = " ".join(next(line for line in recipes if line.startswith("GEOLIFE_DATA =")).split())
    for key in ("data", "reader", "utc_offset_minutes"):
        assert f"--{key} {geolife[key]}" in data
    assert f"--max_gap_minutes {CorpusConfig().max_gap_minutes:g}" in data  # make geolife keeps the default
    as_is = " ".join(next(line for line in recipes if "--output_dir nyc-in-geolife-compare" in line).split())
    assert f"--heldout_users {transfer['output_dir']}" in as_is


def test_make_nyc_recipe_is_run_mtm_defaults():
    """The ablation's choices are run_mtm.py's defaults, and `make nyc` names them: a default changed in one place
    and not the other would make the README's NYC results describe a recipe that `run_mtm.py` no longer runs."""
    defaults = {f.name: f.default for cls in (MTMModelArguments, MTMArguments) for f in fields(cls)}
    recipe = {"vocab_size", "spelling", "contrastive_weight", "contrastive_positives", "visible_token_weight"}
    nyc = _config("nyc_pretrain.yaml")
    assert {key: nyc[key] for key in recipe} == {key: defaults[key] for key in recipe}


def test_make_context_targets_run_each_compare_config_with_the_users_context():
    """`make nyc-context` / `make geolife-context` run `<dataset>_compare.yaml`'s destination entry with the context:
    the target's name must name an existing compare config."""
    recipes = _make_recipes()
    targets = next(line for line in recipes if line.startswith("nyc-context geolife-context:"))
    step = " ".join(next(line for line in recipes if "--destination_user_context true" in line).split())
    assert "run_finetune.py configs/$(@:-context=)_compare.yaml --tasks destination" in step
    for target in targets.split(":")[0].split():
        assert (CONFIGS / f"{target.removesuffix('-context')}_compare.yaml").exists()
