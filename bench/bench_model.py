"""Training-step throughput of TrajBertForMaskedTrajectoryModeling vs transformers' BertForMaskedLM.

One step = forward + backward + AdamW step, same sizes, same batch (with padding), same thread count. Models are run
interleaved after warm-up and the median step time is reported. Prints tokens/s (non-padding tokens) per model and ends
with the machine-readable lines `ratio plain_vs_bert: X.XX` and `ratio full_vs_bert: X.XX` (BERT time / TrajBert time;
1.00 = as fast as BERT). Targets: plain >= 0.95, full (hexagon + level + time embeddings) >= 0.85.

    python bench/bench_model.py                       # hidden 256, 4 layers, batch 16 x 128 (~1 min on 2 cores)
    python bench/bench_model.py --hidden 768 --layers 12 --heads 12 --intermediate 3072 --reps 5
"""

import argparse
import os
import statistics
import sys
import time

import torch
from transformers import BertConfig, BertForMaskedLM

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from modeling_trajfm import TrajBertConfig, TrajBertForMaskedTrajectoryModeling  # noqa: E402


def make_batch(args: argparse.Namespace, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random trajectories of lengths in [seq/2, seq] (so padding is present) with all per-token features."""
    b, n = args.batch, args.seq
    lengths = torch.randint(n // 2, n + 1, (b,), generator=gen)
    lengths[0] = n
    real = torch.arange(n)[None, :] < lengths[:, None]
    input_ids = torch.randint(5, args.vocab, (b, n), generator=gen).masked_fill(~real, 0)
    input_ids[:, 0] = 2
    positions = torch.arange(n).expand(b, n)
    hexagon_ids = ((positions - 1).div(3, rounding_mode="floor") + 1).masked_fill(~real | (positions == 0), 0)
    level_ids = ((positions - 1) % 3 + 1).masked_fill(hexagon_ids == 0, 0)
    hour_ids = torch.randint(1, 169, (b, n), generator=gen).masked_fill(hexagon_ids == 0, 0)
    gap_ids = torch.randint(1, 24, (b, n), generator=gen).masked_fill(hexagon_ids == 0, 0)
    labels = torch.where(real & (torch.rand(b, n, generator=gen) < 0.2), input_ids, torch.full_like(input_ids, -100))
    return dict(
        input_ids=input_ids,
        attention_mask=real.long(),
        token_type_ids=torch.zeros_like(input_ids),
        hexagon_ids=hexagon_ids,
        level_ids=level_ids,
        hour_ids=hour_ids,
        gap_ids=gap_ids,
        labels=labels,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sizes = dict(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=max(512, args.seq),
    )
    features = dict(use_hexagon_embeddings=True, use_level_embeddings=True, use_time_embeddings=True)
    models = {}
    torch.manual_seed(0)
    models["bert"] = BertForMaskedLM(BertConfig(**sizes, attn_implementation=args.attn))
    torch.manual_seed(0)
    models["plain"] = TrajBertForMaskedTrajectoryModeling(TrajBertConfig(**sizes, attn_implementation=args.attn))
    torch.manual_seed(0)
    models["full"] = TrajBertForMaskedTrajectoryModeling(
        TrajBertConfig(**sizes, **features, attn_implementation=args.attn)
    )
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    for m in models.values():
        m.train()

    batch = make_batch(args, torch.Generator().manual_seed(0))
    bert_keys = ("input_ids", "attention_mask", "token_type_ids", "labels")
    inputs = {
        "bert": {k: batch[k] for k in bert_keys},
        "plain": {k: batch[k] for k in bert_keys},  # what a plain BERT-style collator would give
        "full": batch,
    }
    n_tokens = int(batch["attention_mask"].sum())

    def step(name: str) -> float:
        model, opt = models[name], optimizers[name]
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(**inputs[name]).loss
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    names = list(models)
    for _ in range(args.warmup):
        for name in names:
            step(name)
    times = {name: [] for name in names}
    for rep in range(args.reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate so no model always runs first
        for name in order:
            times[name].append(step(name))

    print(
        f"threads={args.threads} attn={args.attn} hidden={args.hidden} layers={args.layers} heads={args.heads} "
        f"intermediate={args.intermediate} vocab={args.vocab} batch={args.batch} seq={args.seq} "
        f"real_tokens={n_tokens}/{args.batch * args.seq} reps={args.reps}"
    )
    median = {name: statistics.median(t) for name, t in times.items()}
    for name in names:
        params = sum(p.numel() for p in models[name].parameters())
        print(
            f"{name:>5}: median step {median[name] * 1000:8.1f} ms  "
            f"(min {min(times[name]) * 1000:.1f}, max {max(times[name]) * 1000:.1f})  "
            f"{n_tokens / median[name]:9.0f} tokens/s  params {params / 1e6:.2f}M"
        )
    print(f"ratio plain_vs_bert: {median['bert'] / median['plain']:.2f}")
    print(f"ratio full_vs_bert: {median['bert'] / median['full']:.2f}")


if __name__ == "__main__":
    main()
