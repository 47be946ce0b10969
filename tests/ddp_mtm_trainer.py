"""Helper for tests/test_ddp.py: one Trainer step + evaluation of TrajBertForMaskedTrajectoryModeling.

Run: `torchrun --nproc_per_node N tests/ddp_mtm_trainer.py --out result.json --global-batch 8` (CPU, gloo). The data,
model init and global batch are fixed, so the reported losses must not depend on N.
"""

import argparse
import json
import os
import sys
import tempfile

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments, default_data_collator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from modeling_trajfm import TrajBertConfig, TrajBertForMaskedTrajectoryModeling  # noqa: E402
from modeling_trajfm.arguments import end_distributed  # noqa: E402

N_EXAMPLES, SEQ_LEN, VOCAB, N_LABELS = 8, 16, 100, 3


def synthetic_dataset() -> Dataset:
    """Fixed sequences with the same number of labelled tokens each (so per-rank eval means average exactly)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (N_EXAMPLES, SEQ_LEN), generator=gen)
    ids[:, 0], ids[:, -1] = 2, 3
    hexagon_ids = torch.arange(SEQ_LEN).div(2, rounding_mode="floor").expand(N_EXAMPLES, -1).clone()
    hexagon_ids[:, 0], hexagon_ids[:, -1] = 0, 0
    labels = torch.full_like(ids, -100)
    for i in range(N_EXAMPLES):
        pos = torch.randperm(SEQ_LEN - 2, generator=gen)[:N_LABELS] + 1
        labels[i, pos] = ids[i, pos]
        ids[i, pos] = 4
    return Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": torch.ones_like(ids).tolist(),
            "hexagon_ids": hexagon_ids.tolist(),
            "level_ids": (hexagon_ids > 0).long().tolist(),
            "hour_ids": torch.randint(1, 169, (N_EXAMPLES, SEQ_LEN), generator=gen).tolist(),
            # gap_ids deliberately left out: the enabled gap table must still take part (DDP needs every parameter)
            "labels": labels.tolist(),
            "unused_column": list(range(N_EXAMPLES)),  # dropped by Trainer (not a forward argument)
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--global-batch", type=int, default=N_EXAMPLES)
    args = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))

    torch.manual_seed(0)
    config = TrajBertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        use_hexagon_embeddings=True,
        use_level_embeddings=True,
        use_time_embeddings=True,
    )
    model = TrajBertForMaskedTrajectoryModeling(config)
    dataset = synthetic_dataset()
    with tempfile.TemporaryDirectory() as tmp:
        training_args = TrainingArguments(
            output_dir=tmp,
            use_cpu=True,
            per_device_train_batch_size=args.global_batch // world,
            per_device_eval_batch_size=args.global_batch // world,
            max_steps=1,
            learning_rate=0.5,
            optim="sgd",  # Adam's first step is ~lr*sign(grad): it would amplify float noise in near-zero grads
            warmup_steps=0,
            lr_scheduler_type="constant",
            logging_steps=1,
            eval_strategy="steps",
            eval_steps=100,
            eval_on_start=True,
            save_strategy="no",
            report_to="none",
            ddp_find_unused_parameters=False,
            seed=0,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=dataset,
            eval_dataset=dataset,
            data_collator=default_data_collator,
        )
        # Not `trainer.evaluate()` before `train()`: under multi-process CPU that leaves the model without its DDP
        # wrapper (transformers 5.24 + accelerate 1.15) and gradients are silently not averaged. eval_on_start is safe.
        train_loss = trainer.train().training_loss
        eval_before = next(log["eval_loss"] for log in trainer.state.log_history if "eval_loss" in log)
        eval_after = trainer.evaluate()["eval_loss"]
    if trainer.is_world_process_zero():
        result = {"world_size": world, "eval_before": eval_before, "train_loss": train_loss, "eval_after": eval_after}
        with open(args.out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
    end_distributed()
