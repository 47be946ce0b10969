"""Model cards of pre-trained and fine-tuned checkpoints, rendered from the templates of the `model_cards` package
with the run's real metrics in the `model-index` metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard
from transformers import TrainingArguments

from tokenization_trajfm import CorpusDescription, PipelineReport, TrajTokenizer
from tokenization_trajfm.subhash import max_cell_tokens

from .hub import eval_results_from_metrics, render_model_card

PLOT_FILE = "training_curves.png"
MTM_TEMPLATE = "trajfm_mtm.md"
FINETUNE_TEMPLATE = "trajfm_finetune.md"

MTM_CARD_METRICS = {
    "eval_perplexity": ("perplexity", "Perplexity per sub-token"),
    "eval_hexagon_acc_top1": ("accuracy", "Hexagon accuracy top-1"),
    "eval_hexagon_acc_top5": ("top_5_accuracy", "Hexagon accuracy top-5"),
    "eval_loss": ("loss", "MTM loss"),
}
#: Card metrics of a fine-tuned model by task kind ("pair", "single", "hexagon").
FINETUNE_CARD_METRICS = {
    "pair": {"test_f1": ("f1", "F1"), "test_accuracy": ("accuracy", "Accuracy")},
    "single": {"test_accuracy@1": ("accuracy", "Accuracy@1"), "test_accuracy@5": ("accuracy", "Accuracy@5"),
               "test_mrr": ("mrr", "MRR"), "test_macro_f1": ("f1", "Macro-F1")},
    "hexagon": {"test_accuracy@1": ("accuracy", "Accuracy@1"), "test_accuracy@5": ("accuracy", "Accuracy@5"),
                "test_mrr": ("mrr", "MRR"), "test_macro_f1": ("f1", "Macro-F1"),
                "test_distance_km_mean": ("mean_distance_error_km", "Mean distance error (km)"),
                "test_distance_km_median": ("median_distance_error_km", "Median distance error (km)")},
}
#: Hub `pipeline_tag` of each trajectory pipeline task (the Hub knows only its own tasks; the card's snippet and
#: tags name the trajectory task).
HUB_PIPELINE_TAGS = {
    "trajectory-fill-mask": "fill-mask",
    "trajectory-destination": "text-classification",
    "trajectory-classification": "text-classification",
}
TASK_DESCRIPTIONS = {
    "next_subtrajectory": "does sub-trajectory B directly follow sub-trajectory A? (binary, trajectory pair)",
    "destination": "the last hexagon of a trajectory from the first part of its visits",
    "user_association_linking": "which of the held-out users made this trajectory? (trajectory-user linking)",
    "user_association_binary": "were these two trajectories made by the same user? (binary, trajectory pair)",
}


def _epochs(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else "n/a"


def _steps(training_args: TrainingArguments) -> str:
    return str(training_args.max_steps) if training_args.max_steps > 0 else "all"


def build_mtm_card(model: Any, tokenizer: TrajTokenizer, description: CorpusDescription, mtm_args: Any,
                   training_args: TrainingArguments, metrics: dict[str, float], report: PipelineReport | None,
                   plot: Path | None, repo_id: str, packed: bool = False) -> ModelCard:
    """The card of a pre-trained checkpoint: data, pipeline report, split, tokenizer regime, model, masking, metrics.
    `packed`: the training batches were packed rows (their size counts rows, not trajectories)."""

    def fmt(key: str, pattern: str) -> str:
        value = metrics.get(key)
        return pattern % value if isinstance(value, (int, float)) else "n/a"

    corpus, counts = description.config, description.counts
    eval_results = eval_results_from_metrics(
        metrics, MTM_CARD_METRICS, task_type="fill-mask", task_name="Masked trajectory modeling",
        dataset_type="trajectories", dataset_name=corpus.dataset_name(), dataset_split="validation users",
    )
    config = model.config
    features = [n for n, on in (("hexagon", config.use_hexagon_embeddings), ("level", config.use_level_embeddings),
                                ("time", config.use_time_embeddings)) if on]
    inputs = ", ".join(features) + " embeddings" if features else "paper (plain BERT inputs)"
    train_counts = counts.get("train", {})
    split_summary = ", ".join(f"{name} {c['users']:,} users / {c['trajectories']:,} trajectories"
                              for name, c in counts.items())
    return render_model_card(
        MTM_TEMPLATE,
        metrics,
        model_name=Path(repo_id).name,
        eval_results=eval_results,
        pipeline_tag=HUB_PIPELINE_TAGS["trajectory-fill-mask"],
        tags=("trajfm", "trajectory", "h3", "trajectory-fill-mask", "trajectory-feature-extraction"),
        datasets=[corpus.dataset_name()],
        repo_id=repo_id,
        init_perplexity=fmt("init_eval_perplexity", "%.4g"),
        init_top1=fmt("init_eval_hexagon_acc_top1", "%.4f"),
        init_top5=fmt("init_eval_hexagon_acc_top5", "%.4f"),
        plot_file=PLOT_FILE if plot is not None else "",
        data_source=description.source,
        resolution=corpus.resolution,
        window_minutes=f"{corpus.window_minutes:g}",
        segmentation=corpus.segmentation(),
        pipeline_report=str(report) if report is not None else "(prepared corpus: no pipeline run here)",
        split_summary=split_summary,
        heldout_users=counts.get("heldout", {}).get("users", 0),
        spelling=tokenizer.spelling,
        vocab_size=len(tokenizer),
        distinct_cells=f"{description.distinct_train_cells:,}",
        vocab_regime=description.vocab_regime,
        max_cell_tokens=max_cell_tokens(tokenizer.resolution, tokenizer.spelling),
        max_seq_length=mtm_args.max_seq_length,
        model_summary=(f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, "
                       f"{config.num_attention_heads} heads, intermediate {config.intermediate_size}, "
                       f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; {inputs}"),
        mlm_probability=mtm_args.mlm_probability,
        mask_span=f" in runs of {mtm_args.mask_span} consecutive hexagons" if mtm_args.mask_span > 1 else "",
        mask_replace_prob=mtm_args.mask_replace_prob,
        random_replace_prob=mtm_args.random_replace_prob,
        keep_prob=round(1 - mtm_args.mask_replace_prob - mtm_args.random_replace_prob, 4),
        contrastive=(f"weight {mtm_args.contrastive_weight}, temperature {mtm_args.contrastive_temperature} (two "
                     f"{_VIEWS[mtm_args.contrastive_views]} are positives"
                     f"{_USER_POSITIVES[mtm_args.contrastive_positives]}"
                     f"{_NEARBY_BATCHES if mtm_args.contrastive_batches == 'nearby' else ''})"
                     if mtm_args.contrastive_weight > 0
                     else "none (MTM only)"),
        training_summary=(f"{_epochs(metrics.get('epoch'))} epochs, {_steps(training_args)} "
                          f"steps, batch {training_args.per_device_train_batch_size}"
                          f"{' packed rows' if packed else ''} x {training_args.world_size} "
                          f"process(es) x {training_args.gradient_accumulation_steps} accumulation, learning rate "
                          f"{training_args.learning_rate}, seed {training_args.seed}"
                          f"{_FROZEN_TABLE if mtm_args.freeze_token_embeddings else ''}"
                          f"{_VISIBLE_TOKENS % mtm_args.visible_token_weight if mtm_args.visible_token_weight else ''}"
                          ),
        train_tokens=f"{train_counts.get('tokens'):,}" if train_counts.get("tokens") is not None else "n/a",
        train_sequences=f"{train_counts.get('sequences'):,}" if train_counts.get("sequences") is not None else "n/a",
    )


#: What the card adds to the training summary with `--freeze_token_embeddings`.
_FROZEN_TABLE = "; the token table kept at its initial values"
#: What the card adds to the training summary with `--visible_token_weight`.
_VISIBLE_TOKENS = "; every visible hexagon token also predicts itself (weight %g)"
#: What `--contrastive_views` makes the two views of a trajectory.
_VIEWS = {"masked": "masked views of each trajectory", "pieces": "disjoint masked pieces of each trajectory"}
#: What `--contrastive_positives` adds to the card's description of the contrastive term.
_USER_POSITIVES = {"views": "", "user": ", and so are the trajectories of the same user"}

#: What `--contrastive_batches nearby` adds to the card's description of the contrastive term.
_NEARBY_BATCHES = "; each batch holds trajectories from one district, so the negatives are near one another"


def _selection(train_metrics: dict[str, Any], args: Any) -> str:
    """How the card's checkpoint was chosen: by validation with early stopping, by validation over the whole
    budget (patience 0), or not at all (no validation split, or the last checkpoint kept)."""
    if not train_metrics.get("validation_samples"):
        return "no validation split: the whole budget"
    if not args.load_best_model_at_end:
        return "the whole budget, the last checkpoint kept; validation scored, not used to choose"
    patience = getattr(args, "early_stopping_patience", 0)
    if patience > 0:
        return (f"early stopping on the validation split after {patience} evaluations without gain, the best "
                "checkpoint kept")
    return "the whole budget, the best checkpoint on the validation split kept"


def build_finetune_card(task: Any, init: str, base_checkpoint: str, data_source: str, dataset_name: str,
                        args: TrainingArguments, metrics: dict[str, float], train_metrics: dict[str, float],
                        pipeline_report: PipelineReport | None, push: bool) -> ModelCard:
    """The card of a fine-tuned checkpoint: task, split, test metrics beside the baselines, recipe."""
    eval_results = eval_results_from_metrics(metrics, FINETUNE_CARD_METRICS[task.kind],
                                             task_type="text-classification", task_name=task.name,
                                             dataset_type="trajectories", dataset_name=dataset_name,
                                             dataset_split="test")
    table = "\n".join(f"| {k.removeprefix('test_')} | {v:.4f} |" for k, v in metrics.items()
                      if isinstance(v, float))
    baselines = "\n".join(
        f"| {name} | " + ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float)) + " |"
        for name, values in task.baselines.items()
    )
    default_name = f"{Path(base_checkpoint.rstrip('/')).name}-{task.name}" + (
        "-random-init" if init == "random" else "")
    model_name = args.hub_model_id if push and args.hub_model_id else default_name
    pipeline_task = "trajectory-destination" if task.kind == "hexagon" else "trajectory-classification"
    return render_model_card(
        FINETUNE_TEMPLATE, metrics, model_name=model_name, eval_results=eval_results,
        pipeline_tag=HUB_PIPELINE_TAGS[pipeline_task], base_model=base_checkpoint if init == "pretrained" else None,
        tags=("trajfm", "trajectory", "h3", task.name, pipeline_task, "trajectory-feature-extraction"),
        datasets=[dataset_name], pipeline_task=pipeline_task, pair=task.kind == "pair",
        task_name=task.name, task_description=TASK_DESCRIPTIONS[task.name], init=init,
        base_checkpoint=base_checkpoint, metrics_table=table, baselines_table=baselines,
        split=json.dumps(task.info, indent=1, default=str),
        data_source=data_source,
        pipeline_report=str(pipeline_report), epochs=_epochs(args.num_train_epochs),
        epochs_trained=_epochs(train_metrics.get("epochs_trained", train_metrics.get("epoch"))),
        selection=_selection(train_metrics, args),
        head_learning_rate=getattr(args, "head_learning_rate", None) or args.learning_rate,
        batch_size=args.per_device_train_batch_size,
        learning_rate=args.learning_rate, seed=args.seed, train_samples=train_metrics.get("train_samples"),
        model_class="TrajBertForHexagonPrediction" if task.kind == "hexagon" else "TrajBertForSequenceClassification",
        repo_id=args.hub_model_id or Path(args.output_dir).name,
    )
