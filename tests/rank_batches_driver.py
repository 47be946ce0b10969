"""Helper for tests/test_prepared_corpus.py: run `run_mtm.main(argv)` (under torchrun) and write, per rank, the type
of its training data loader and the sequences it trained on, unmasked, in order.

    torchrun --nproc_per_node 2 tests/rank_batches_driver.py OUT_DIR run_mtm-arguments...
"""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import run_mtm  # noqa: E402
from modeling_trajfm.arguments import end_distributed  # noqa: E402
from modeling_trajfm.trainer import MTMTrainer  # noqa: E402


def main() -> None:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    seen: dict = {"sequences": []}
    train_step = MTMTrainer.training_step

    def recording_step(trainer, model, inputs, *args, **kwargs):
        ids = torch.where(inputs["labels"] != -100, inputs["labels"], inputs["input_ids"])  # the tokens before masking
        seen["sequences"] += [row[mask.bool()].tolist() for row, mask in zip(ids, inputs["attention_mask"])]
        seen["loader"] = type(trainer.callback_handler.train_dataloader).__name__
        return train_step(trainer, model, inputs, *args, **kwargs)

    MTMTrainer.training_step = recording_step
    run_mtm.main(argv)
    (out / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(seen))
    end_distributed()  # as run_mtm.py's entry point does: a rank leaving with its group alive can abort at exit


if __name__ == "__main__":
    main()
