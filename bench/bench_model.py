"""Training-step throughput of TrajBertForMaskedTrajectoryModeling vs transformers' BertForMaskedLM, and the padding
share of NYC batches with and without packing.

One step = forward + backward + fused AdamW step (Trainer's default), same sizes, same batch (with padding), same
thread count. Models are run interleaved after warm-up and the median step time is reported. Prints tokens/s
(non-padding tokens) per model and the machine-readable lines (BERT time / TrajBert time; 1.00 = as fast as BERT):

- `ratio plain_vs_bert: X.XX`: all TrajBert options off (target >= 0.95);
- `ratio full_vs_bert: X.XX`: hexagon + level + time embeddings (target >= 0.85);
- `ratio sparse_vs_bert: X.XX`: full, with sparse prediction (MTM head only at the ~20% labelled positions; target
  >= 2.0 at the paper's 30k vocabulary, where the decoder dominates a dense step).

Then, on NYC-length sequences (the STAN NYC recipe of the README: 3-day gaps, a 300-token hex vocabulary, sequences of
at most `--pack_length` tokens; the synthetic city when ../shared/data is absent), the share of padding tokens in
batches of `--pack_batch` rows: `padding_share_unpacked` (shuffled trajectories, padded per batch),
`padding_share_length_sorted` (trajectories sorted by length: the best any length grouping can do) and
`padding_share_packed` (`modeling_trajfm.packing.pack_trajectories` rows, shuffled; target < 0.05).

`--device cuda --bf16` times the same steps on a GPU under bf16 autocast and adds each model's achieved TFLOP/s and
model FLOPs utilisation (MFU: model FLOPs / step time / peak bf16 FLOP/s, from a table of known GPUs or
`--peak_tflops`). Model FLOPs count real (non-padding) tokens: 3 x forward (backward = 2 x forward) of the encoder
matmuls and attention, plus the MTM head at the positions it predicts (all real tokens dense, the labelled ones sparse).

    python bench/bench_model.py                       # hidden 256, 4 layers, 30k vocab, batch 16 x 128 (~2 min)
    python bench/bench_model.py --device cuda --bf16 --batch 64 --seq 512 --reps 20
    python bench/bench_model.py --hidden 768 --layers 12 --heads 12 --intermediate 3072 --reps 5
"""

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import BertConfig, BertForMaskedLM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from modeling_trajfm import TrajBertConfig, TrajBertForMaskedTrajectoryModeling  # noqa: E402
from modeling_trajfm.packing import pack_trajectories, padding_share  # noqa: E402
from tokenization_trajfm import SegmentationConfig, TrajTokenizer, build_trajectories, load_checkins  # noqa: E402

NYC = Path(os.environ.get("TRAJFM_SHARED_DATA", REPO.parent / "shared" / "data")) / "foursquare_nyc_stan"
# Dense bf16 tensor-core peaks (TFLOP/s) of common GPUs, most specific name first; --peak_tflops overrides.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
)


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


def train_flops(config: TrajBertConfig | BertConfig, n_tokens: int, seq: int, n_predicted: int) -> float:
    """Model FLOPs of one training step (see the module docstring): 3 x the forward multiply-adds x 2."""
    h, inter = config.hidden_size, config.intermediate_size
    encoder = config.num_hidden_layers * (8 * h * h + 4 * h * inter + 4 * seq * h)  # per token: QKVO, FFN, attention
    head = 2 * h * h + 2 * h * config.vocab_size  # per predicted position: transform + decoder
    return 3.0 * (n_tokens * encoder + n_predicted * head)


def peak_tflops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops is not None:
        return args.peak_tflops
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def nyc_padding_shares(args: argparse.Namespace) -> dict[str, float]:
    """Padding share of NYC batches: shuffled, length-sorted and packed (see the module docstring)."""
    data = NYC / "nyc_stan_checkins.csv.gz"
    checkins = load_checkins(str(data), reader="stan_nyc") if data.is_file() else load_checkins(None)
    trajectories, _ = build_trajectories(checkins, segmentation=SegmentationConfig(max_gap_minutes=72 * 60))
    tokenizer = TrajTokenizer.train(trajectories, vocab_size=300, spelling="hex")
    datasets.disable_progress_bars()
    corpus = tokenizer.tokenize_dataset(datasets.Dataset(trajectories), max_length=args.pack_length)
    packed = pack_trajectories(corpus, args.pack_length)
    lengths = np.array([len(ids) for ids in corpus["input_ids"]])
    packed_lengths = np.array([len(ids) for ids in packed["input_ids"]])
    rng = np.random.default_rng(0)
    print(
        f"padding: {'STAN NYC' if data.is_file() else 'synthetic city (no ../shared/data)'}, {len(lengths)} sequences "
        f"(median {np.median(lengths):.0f}, max {lengths.max()} tokens) -> {len(packed_lengths)} packed rows of <= "
        f"{args.pack_length}, batches of {args.pack_batch}"
    )
    return {
        "unpacked": padding_share(rng.permutation(lengths), args.pack_batch),
        "length_sorted": padding_share(np.sort(lengths), args.pack_batch),
        "packed": padding_share(rng.permutation(packed_lengths), args.pack_batch),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=30_000, help="the paper's vocabulary size")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (parameters and AdamW stay fp32)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="peak FLOP/s of the device, for the MFU")
    parser.add_argument("--pack_length", type=int, default=512, help="packed row length (run_mtm's max_seq_length)")
    parser.add_argument("--pack_batch", type=int, default=32, help="rows per batch for the padding share")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

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
    torch.manual_seed(0)
    models["sparse"] = TrajBertForMaskedTrajectoryModeling(
        TrajBertConfig(**sizes, **features, sparse_prediction=True, attn_implementation=args.attn)
    )
    for m in models.values():
        m.to(device).train()
    # Fused AdamW is Trainer's default optimizer (`adamw_torch_fused`); the unfused one costs as much as a step here.
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for name, m in models.items()}

    batch = {k: v.to(device) for k, v in make_batch(args, torch.Generator().manual_seed(0)).items()}
    bert_keys = ("input_ids", "attention_mask", "token_type_ids", "labels")
    inputs = {
        "bert": {k: batch[k] for k in bert_keys},
        "plain": {k: batch[k] for k in bert_keys},  # what a plain BERT-style collator would give
        "full": batch,
        "sparse": batch,
    }
    n_tokens = int(batch["attention_mask"].sum())
    n_labelled = int((batch["labels"] != -100).sum())
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(name: str) -> float:
        model, opt = models[name], optimizers[name]
        sync()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = model(**inputs[name]).loss
        loss.backward()
        opt.step()
        sync()
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
        f"device={device} bf16={args.bf16} threads={args.threads} attn={args.attn} hidden={args.hidden} "
        f"layers={args.layers} heads={args.heads} intermediate={args.intermediate} vocab={args.vocab} "
        f"batch={args.batch} seq={args.seq} real_tokens={n_tokens}/{args.batch * args.seq} labelled={n_labelled} "
        f"reps={args.reps}"
    )
    median = {name: statistics.median(t) for name, t in times.items()}
    peak = peak_tflops(args)
    for name in names:
        params = sum(p.numel() for p in models[name].parameters())
        predicted = n_labelled if getattr(models[name].config, "sparse_prediction", False) else n_tokens
        tflops = train_flops(models[name].config, n_tokens, args.seq, predicted) / median[name] / 1e12
        mfu = f"  MFU {tflops / peak:.1%}" if peak else ""
        print(
            f"{name:>6}: median step {median[name] * 1000:8.1f} ms  "
            f"(min {min(times[name]) * 1000:.1f}, max {max(times[name]) * 1000:.1f})  "
            f"{n_tokens / median[name]:9.0f} tokens/s  {tflops:.3f} TFLOP/s{mfu}  params {params / 1e6:.2f}M"
        )
    print(f"ratio plain_vs_bert: {median['bert'] / median['plain']:.2f}")
    print(f"ratio full_vs_bert: {median['bert'] / median['full']:.2f}")
    print(f"ratio sparse_vs_bert: {median['bert'] / median['sparse']:.2f}")

    shares = nyc_padding_shares(args)
    for name, share in shares.items():
        print(f"padding_share_{name}: {share:.3f}")


if __name__ == "__main__":
    main()
