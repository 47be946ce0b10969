"""`run_mtm.py --push_to_hub` against a fake Hub on 127.0.0.1, reload from it, and the offline fail-fast.

run_mtm and the reload run in subprocesses: huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_TOKEN when imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from hub_server import FakeHub

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "run_mtm.py"
TINY = [
    "--synthetic_users", "60", "--synthetic_days", "14",
    "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "64",
    "--vocab_size", "150", "--max_seq_length", "64", "--per_device_train_batch_size", "8",
    "--max_steps", "4", "--eval_steps", "2", "--save_steps", "2", "--disable_tqdm", "true", "--use_cpu",
]
RELOAD = """
import sys, torch
sys.path.insert(0, sys.argv[3])
import modeling_trajfm, tokenization_trajfm
from transformers import AutoModelForMaskedLM, AutoTokenizer
remote = AutoModelForMaskedLM.from_pretrained(sys.argv[1]).eval()
local = AutoModelForMaskedLM.from_pretrained(sys.argv[2]).eval()
tok_remote, tok_local = AutoTokenizer.from_pretrained(sys.argv[1]), AutoTokenizer.from_pretrained(sys.argv[2])
assert tok_remote.get_vocab() == tok_local.get_vocab()
batch = tok_remote([[(40.75, -73.99, 1700000000), (40.76, -73.98, 1700003600), (40.72, -74.0, 1700007200)]],
                   return_tensors="pt")
with torch.no_grad():
    torch.testing.assert_close(remote(**batch).logits, local(**batch).logits)
print("RELOAD-OK")
"""


def _env(tmp_path: Path, endpoint: str | None, home: str, offline: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path / home), HF_TOKEN="dummy", TOKENIZERS_PARALLELISM="false",
               HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1")
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def test_push_then_reload_from_hub(tmp_path):
    out = tmp_path / "out"
    with FakeHub(lifetime_s=300) as hub:
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), *TINY, "--output_dir", str(out), "--push_to_hub",
             "--hub_model_id", "user/trajfm-test"],
            cwd=tmp_path, env=_env(tmp_path, hub.endpoint, "hf_home_push"), capture_output=True, text=True,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        repo = hub.repos["user/trajfm-test"]
        for name in ("config.json", "model.safetensors", "tokenizer_config.json", "vocab.json",
                     "modeling_trajbert.py", "tokenization_trajfm.py", "trajfm_corpus.json", "training_curves.png",
                     "README.md"):
            assert name in repo.files, name
        assert not any(p.startswith("checkpoint-") for p in repo.files)
        assert repo.commits[-1]["files"] == ["README.md"]  # the curated card is pushed last
        assert b"model-index" in repo.files["README.md"]
        assert repo.files["README.md"] == (out / "README.md").read_bytes()

        reload = subprocess.run(
            [sys.executable, "-c", RELOAD, "user/trajfm-test", str(out), str(ROOT)],
            cwd=tmp_path, env=_env(tmp_path, hub.endpoint, "hf_home_fresh"), capture_output=True, text=True,
            timeout=120,
        )
        assert reload.returncode == 0 and "RELOAD-OK" in reload.stdout, reload.stdout[-2000:] + reload.stderr[-3000:]


def test_push_offline_fails_at_startup(tmp_path):
    out = tmp_path / "out"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--output_dir", str(out), "--push_to_hub", "--hub_model_id",
         "user/trajfm-test"],
        cwd=tmp_path, env=_env(tmp_path, None, "hf_home", offline=True), capture_output=True, text=True, timeout=60,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "offline mode" in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr
    assert elapsed < 30
    assert not out.exists()  # failed before any data preparation or training
