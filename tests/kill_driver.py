"""Helper for tests/test_run_mtm.py: run `run_mtm.main(argv)` and SIGKILL this process at a chosen point.

    python tests/kill_driver.py POINT STEP run_mtm-arguments...

POINT: `after_checkpoint` (checkpoint-STEP is complete), `mid_step` (inside optimizer step STEP, after the backward
pass), `mid_save` (checkpoint-STEP has its weights but not yet its optimizer, RNG or trainer state).
"""

import os
import signal
import sys

from transformers import Trainer, TrainerCallback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import run_mtm  # noqa: E402


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Kill(TrainerCallback):
    def __init__(self, point: str, step: int):
        self.point, self.step = point, step

    def on_save(self, args, state, control, **kwargs):
        if self.point == "after_checkpoint" and state.global_step == self.step:
            die()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.point == "mid_step" and state.global_step + 1 == self.step:
            die()


def main() -> None:
    point, step, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    if point == "mid_save":
        save_optimizer = Trainer._save_optimizer_and_scheduler

        def killing_save(trainer, output_dir):
            if trainer.state.global_step == step:
                die()
            save_optimizer(trainer, output_dir)

        Trainer._save_optimizer_and_scheduler = killing_save
    run_mtm.main(argv, callbacks=[Kill(point, step)])


if __name__ == "__main__":
    main()
