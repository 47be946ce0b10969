"""Training-step time on a CPU that another job shares: torch's OpenMP threads spinning while they wait (the default),
sleeping (`OMP_WAIT_POLICY=PASSIVE`, what the Makefile sets) or a single thread (`OMP_NUM_THREADS=1`).

By default an OpenMP thread that waits at a barrier keeps its core busy for a while before it sleeps. Alone that
saves a wake-up; when another job holds the cores, each process spins on cores the other one needs, and both slow
down far beyond their fair share. Each measurement runs in a fresh process (the variables are read when torch loads
its OpenMP runtime): a training step of `make nyc`'s model size (hidden 256, 4 layers, vocabulary 1,000, `--rows` x
`--seq` tokens, fused AdamW), timed alone and beside a competitor that trains the same model on `make nyc`'s
pre-training batch (32 x 128) with the default policy, as a test suite or a second run would; interleaved over
`--rounds` rounds. Prints median seconds per step and the machine-readable lines (default time / setting's time;
above 1.00 = faster than the default):

- `ratio passive_vs_default_shared: X.XX` (target >= 1.5 on a 2-core CPU);
- `ratio passive_vs_default_alone: X.XX` (what sleeping costs when nothing competes; target >= 0.8);
- `ratio one_thread_vs_default_{shared,alone}: X.XX` (the other way to stop spinning, for comparison).

    python bench/bench_shared_cpu.py                          # pre-training batch, 32 x 128 (~5 min on 2 cores)
    python bench/bench_shared_cpu.py --rows 16 --seq 48 --steps 20   # a fine-tuning batch of NYC pairs
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: What each worker process is started with (on top of the caller's environment, less these two variables).
SETTINGS = {"default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "one_thread": {"OMP_NUM_THREADS": "1"}}


def _training_step(rows: int, seq: int, seed: int):
    """A `make nyc`-sized MTM model and one closure that runs a training step on a fixed random batch."""
    import torch

    sys.path.insert(0, str(REPO))
    from modeling_trajfm import TrajBertConfig, TrajBertForMaskedTrajectoryModeling

    torch.manual_seed(seed)
    config = TrajBertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                            intermediate_size=1024, max_position_embeddings=512)
    model = TrajBertForMaskedTrajectoryModeling(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    input_ids = torch.randint(5, config.vocab_size, (rows, seq))
    labels = torch.where(torch.rand(input_ids.shape) < 0.2, input_ids, torch.full_like(input_ids, -100))

    def step() -> None:
        loss = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def worker(steps: int, rows: int, seq: int) -> None:
    """Warm up, then print the median seconds per step as JSON."""
    step = _training_step(rows, seq, seed=0)
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    print(json.dumps({"seconds_per_step": statistics.median(times)}))


def compete() -> None:
    """Train `make nyc`'s pre-training batch (32 x 128 tokens) until killed."""
    step = _training_step(32, 128, seed=1)
    while True:
        step()


def _environment(setting: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    return {**env, **setting}


def measure(setting: dict[str, str], shared: bool, steps: int, rows: int, seq: int) -> float:
    """Seconds per step of a fresh worker process with `setting`, alone or beside a default-policy competitor."""
    competitor = None
    if shared:
        competitor = subprocess.Popen([sys.executable, __file__, "--compete"], env=_environment({}),
                                      stdout=subprocess.DEVNULL)
        time.sleep(5)  # the competitor has loaded torch and is training
    try:
        command = [sys.executable, __file__, "--worker", "--steps", str(steps), "--rows", str(rows), "--seq", str(seq)]
        output = subprocess.run(command, env=_environment(setting), check=True, capture_output=True, text=True).stdout
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return json.loads(output.strip().splitlines()[-1])["seconds_per_step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="Timed steps per measurement.")
    parser.add_argument("--rows", type=int, default=32, help="Rows a batch (make nyc: 32 in pre-training).")
    parser.add_argument("--seq", type=int, default=128, help="Tokens per row.")
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds; the median is reported.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compete", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps, args.rows, args.seq)
    if args.compete:
        return compete()

    print(f"CPU cores: {os.cpu_count()}; {args.rounds} rounds of {args.steps} steps, {args.rows} x {args.seq} tokens")
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for condition in ("alone", "shared"):
            for name, setting in SETTINGS.items():
                times.setdefault((condition, name), []).append(
                    measure(setting, condition == "shared", args.steps, args.rows, args.seq))
    median = {key: statistics.median(values) for key, values in times.items()}
    for (condition, name), seconds in median.items():
        print(f"{condition:>6} {name:>10}: {seconds:.3f} s/step")
    for condition in ("shared", "alone"):
        for name in SETTINGS:
            if name != "default":
                ratio = median[(condition, "default")] / median[(condition, name)]
                print(f"ratio {name}_vs_default_{condition}: {ratio:.2f}")


if __name__ == "__main__":
    main()
