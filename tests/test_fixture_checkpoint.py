"""The committed tiny checkpoint loads through the Auto classes and still gives its stored outputs."""

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

import tokenization_trajfm
from modeling_trajfm import TrajBertForMaskedTrajectoryModeling

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHECKPOINT = FIXTURES / "tiny-trajbert"
EXPECTED = torch.load(FIXTURES / "tiny-trajbert-expected.pt")


def test_fixture_is_small_and_complete():
    files = {p.name for p in CHECKPOINT.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "vocab.json"} <= files
    assert sum(p.stat().st_size for p in CHECKPOINT.iterdir()) < 200_000
    auto_map = AutoConfig.from_pretrained(CHECKPOINT).auto_map
    assert {
        "AutoConfig",
        "AutoModel",
        "AutoModelForMaskedLM",
        "AutoModelForSequenceClassification",
        "AutoTokenizer",
    } <= set(auto_map)


def test_tokenizer_and_model_reproduce_stored_outputs():
    tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT)
    assert isinstance(tokenizer, tokenization_trajfm.TrajTokenizer)
    batch = tokenizer([EXPECTED["probe"]], return_tensors="pt")
    for key, value in EXPECTED["batch"].items():
        assert torch.equal(batch[key], value), key
    model = AutoModelForMaskedLM.from_pretrained(CHECKPOINT).eval()
    assert isinstance(model, TrajBertForMaskedTrajectoryModeling)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, EXPECTED["logits"], rtol=0, atol=1e-6)


def test_fixture_loads_into_every_auto_head(tmp_path):
    batch = EXPECTED["batch"]
    encoder = AutoModel.from_pretrained(CHECKPOINT).eval()
    classifier = AutoModelForSequenceClassification.from_pretrained(CHECKPOINT, num_labels=3).eval()
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
        assert classifier(**batch).logits.shape == (1, 3)
    encoder.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).last_hidden_state, hidden)
