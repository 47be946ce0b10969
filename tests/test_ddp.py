"""2-process CPU DDP (torchrun, gloo) must report the same MTM losses as 1 process on the same global batch.

Guards against the transformers 5 trap where a head taking `**kwargs` with a plain mean loss is multiplied by the
number of processes under Trainer (`average_tokens_across_devices`).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "ddp_mtm_trainer.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")
TORCHRUN = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")

pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")


def _run(nproc: int, out: Path, port: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [
        TORCHRUN,
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(SCRIPT),
        "--out",
        str(out),
        "--global-batch",
        "8",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one(tmp_path):
    single = _run(1, tmp_path / "one.json", _free_port())
    double = _run(2, tmp_path / "two.json", _free_port())
    assert double["world_size"] == 2 and single["world_size"] == 1
    for key in ("eval_before", "train_loss", "eval_after"):
        assert abs(single[key] - double[key]) < 1e-4, (key, single, double)
    # One optimizer step actually changed the model (so eval_after checks that the gradients agree too).
    assert abs(single["eval_after"] - single["eval_before"]) > 1e-3
