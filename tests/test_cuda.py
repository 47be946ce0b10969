"""GPU checks, skipped where torch sees no CUDA device (CI has none): the attention paths agree on the device, bf16
stays finite on padded and packed rows, the device matches the CPU, and both scripts train, select and answer there
(the embedding forms, probes and contrastive tuning move tensors between the model's device and numpy).

    python -m pytest tests/test_cuda.py     # on a GPU machine
"""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from conftest import TINY_CORPUS_ARGS
from test_modeling import FakeTokenizer, _encoder, make_batch, make_trajectory, real_positions

import run_finetune
import run_mtm
from modeling_trajfm import DataCollatorWithTrajectoryPadding
from modeling_trajfm.packing import pack_trajectories

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def _packed_batch() -> dict[str, torch.Tensor]:
    """Rows holding several trajectories each (`sequence_ids`), padded to the longest row."""
    gen = torch.Generator().manual_seed(1)
    features = [make_trajectory(gen, n) for n in (6, 3, 5, 2, 7, 4)]
    rows = pack_trajectories(datasets.Dataset.from_list(features), 48).to_list()
    batch = DataCollatorWithTrajectoryPadding(FakeTokenizer())(rows)
    assert (batch["sequence_ids"].amax(dim=1) > 1).any()  # some row holds more than one trajectory
    return batch


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-4), (torch.bfloat16, 6e-2)])
def test_sdpa_matches_eager_on_cuda(packed, dtype, atol):
    batch = {k: v.to(CUDA) for k, v in (_packed_batch() if packed else make_batch()).items()}
    with torch.no_grad():
        sdpa = _encoder("sdpa").to(CUDA, dtype)(**batch).last_hidden_state
        eager = _encoder("eager").to(CUDA, dtype)(**batch).last_hidden_state
    assert torch.isfinite(sdpa).all() and torch.isfinite(eager).all()  # padding rows included
    mask = real_positions(batch)
    torch.testing.assert_close(sdpa[mask].float(), eager[mask].float(), atol=atol, rtol=0)


def test_cuda_matches_cpu():
    model = _encoder("sdpa")
    batch = _packed_batch()
    with torch.no_grad():
        on_cpu = model(**batch).last_hidden_state
        on_gpu = model.to(CUDA)(**{k: v.to(CUDA) for k, v in batch.items()}).last_hidden_state.cpu()
    mask = real_positions(batch)
    torch.testing.assert_close(on_gpu[mask], on_cpu[mask], atol=1e-4, rtol=0)


MTM = [*TINY_CORPUS_ARGS, "--heldout_fraction", "0.5", "--hidden_size", "32", "--num_hidden_layers", "1",
       "--num_attention_heads", "2", "--intermediate_size", "64", "--vocab_size", "150", "--max_seq_length", "64",
       "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--disable_tqdm", "true",
       "--dataloader_num_workers", "0", "--max_steps", "12", "--eval_steps", "6", "--save_steps", "6", "--bf16"]


def test_scripts_train_and_answer_on_cuda_in_bf16(tmp_path):
    pretrained = tmp_path / "mtm"
    result = run_mtm.main([*MTM, "--output_dir", str(pretrained)])
    assert next(result.model.parameters()).device.type == "cuda"
    assert torch.load(pretrained / "training_args.bin", weights_only=False).bf16
    metrics = json.loads((pretrained / "all_results.json").read_text())
    assert 1 < metrics["eval_perplexity"] < float("inf")

    out = tmp_path / "compare"
    run_finetune.main(["--model_name_or_path", str(pretrained), "--output_dir", str(out), "--compare", "--tasks",
                       "user_association", "destination", "--max_steps", "3",
                       "--per_device_train_batch_size", "16", "--max_seq_length", "64", "--max_input_visits", "16",
                       "--contrastive_steps", "2", "--bf16", "--disable_tqdm", "true",
                       "--dataloader_num_workers", "0"])
    report = json.loads((out / "compare_report.json").read_text())
    assert set(report["tasks"]) == {"destination", "user_association_linking", "user_association_binary"}
    for entry, task in report["tasks"].items():
        for init in ("pretrained", "random"):
            value = task[init][task["primary_metric"]]
            assert 0.0 <= value <= 1.0, (entry, init)
    linking = json.loads((out / "user_association_linking" / "pretrained" / "task_report.json").read_text())
    assert {"classifier", "retrieval_prototype"} <= set(linking["validation_by_form"])
    assert report["probes"]
