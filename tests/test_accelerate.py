"""`accelerate launch` with the shipped CPU config runs two ranks (gloo) and trains exactly as torchrun does; a
launch that asks for several processes but starts one says so."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from modeling_trajfm.arguments import requested_processes

BIN = Path(sys.executable).parent
ACCELERATE = str(BIN / "accelerate") if (BIN / "accelerate").exists() else shutil.which("accelerate")
TORCHRUN = str(BIN / "torchrun") if (BIN / "torchrun").exists() else shutil.which("torchrun")
CPU_CONFIG = REPO / "configs" / "accelerate_cpu_2proc.yaml"
TINY = ["--synthetic_users", "40", "--synthetic_days", "14", "--hidden_size", "32", "--num_hidden_layers", "1",
        "--num_attention_heads", "2", "--intermediate_size", "64", "--vocab_size", "150", "--max_seq_length", "64",
        "--per_device_train_batch_size", "8", "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no",
        "--disable_tqdm", "true", "--use_cpu", "--dataloader_num_workers", "0", "--ddp_find_unused_parameters",
        "false"]


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(ACCELERATE is None or TORCHRUN is None, reason="accelerate or torchrun not installed")
def test_accelerate_config_runs_two_ranks_like_torchrun(tiny_checkpoint, tmp_path):
    """Same arguments and tokenizer (a WordPiece vocabulary trained in two processes may break frequency ties
    differently), so the weights must be identical."""
    from safetensors.torch import load_file

    accelerated, torchrun = tmp_path / "accelerate", tmp_path / "torchrun"
    tiny = [*TINY, "--tokenizer_name", str(tiny_checkpoint["path"])]
    proc = _run([ACCELERATE, "launch", "--config_file", str(CPU_CONFIG), "--main_process_port", _port(), "run_mtm.py",
                 *tiny, "--output_dir", str(accelerated)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Process rank 0/2" in proc.stdout + proc.stderr
    proc = _run([TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", _port(),
                 "run_mtm.py", *tiny, "--output_dir", str(torchrun)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    expected, got = load_file(str(torchrun / "model.safetensors")), load_file(str(accelerated / "model.safetensors"))
    assert expected.keys() == got.keys() and all((expected[k] == got[k]).all() for k in expected)


@pytest.mark.skipif(ACCELERATE is None, reason="accelerate not installed")
def test_one_process_instead_of_several_is_reported(tmp_path):
    proc = _run([ACCELERATE, "launch", "--cpu", "--num_processes", "2", "run_finetune.py", "--model_name_or_path",
                 str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out"), "--use_cpu"])
    assert proc.returncode != 0  # the checkpoint does not exist: the run stops after the warning
    assert "asked for 2 processes but this run has 1" in proc.stdout + proc.stderr


def test_requested_processes_from_the_launch_command(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("num_processes: 3\n")
    assert requested_processes(["/x/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "run.py"]) == 2
    assert requested_processes(["accelerate", "launch", "--num-processes=4", "run.py"]) == 4
    assert requested_processes(["python", "/x/bin/accelerate", "launch", "--config_file", str(config), "r.py"]) == 3
    assert requested_processes(["python", "run_mtm.py", "--num_processes", "2"]) == 1
