"""Model cards rendered from `model_cards/` templates, and pushing a checkpoint folder to the Hub.

Shared by `run_mtm.py` and `run_finetune.py`:

- `check_push_possible(push_to_hub)` at START-UP: raises `HubOfflineError` (a ValueError with what to change) when a
  push is requested in offline mode (`HF_HUB_OFFLINE=1` / `TRANSFORMERS_OFFLINE=1`), so no training time is wasted.
- `eval_results_from_metrics(...)` + `render_model_card(template_name, metrics, model_name=..., **fields)` build a
  `huggingface_hub.ModelCard` whose YAML metadata carries the real metrics (`model-index`), from a Jinja template in
  `model_cards/` (we do not use Trainer's own card: for a model trained from scratch it renders a broken
  "fine-tuned version of []" line and never puts perplexity into the metadata).
- `push_checkpoint(output_dir, repo_id, card=...)` uploads the folder (without intermediate `checkpoint-*` folders)
  and then pushes the curated card LAST, because every `push_to_hub` of a model, tokenizer or Trainer rewrites
  README.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub import constants as hub_constants

from model_cards import TEMPLATES_DIR as MODEL_CARDS_DIR

#: Never pushed: intermediate checkpoints (optimizer states), TensorBoard runs, local caches.
DEFAULT_IGNORE_PATTERNS = ("checkpoint-*", "checkpoint-*/*", "runs/*", "*.lock", ".cache/*")
_TRUE = {"1", "ON", "YES", "TRUE"}


class HubOfflineError(ValueError):
    """A push was requested while the Hub client is in offline mode."""


def is_offline() -> bool:
    """Offline mode as the Hub client sees it, re-reading the environment (it may change after import)."""
    flags = (os.environ.get(name, "").upper() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(hub_constants.HF_HUB_OFFLINE) or any(flag in _TRUE for flag in flags)


def check_push_possible(push_to_hub: bool, hub_model_id: str | None = None) -> None:
    """Fail fast (before any training) when `push_to_hub` cannot work; call it right after parsing arguments."""
    if push_to_hub and is_offline():
        raise HubOfflineError(
            "--push_to_hub was given but the Hugging Face Hub is in offline mode (HF_HUB_OFFLINE=1 or "
            "TRANSFORMERS_OFFLINE=1). Unset HF_HUB_OFFLINE to push, or drop --push_to_hub: the checkpoint is saved in "
            "--output_dir either way and can be pushed later with modeling_trajfm.hub.push_checkpoint(output_dir, "
            f"{hub_model_id or '<repo_id>'!r})."
        )


def template_path(template_name: str) -> Path:
    """A template by file name in `model_cards/` (with or without `.md`), or a path to any template file."""
    candidates = [Path(template_name), MODEL_CARDS_DIR / template_name, MODEL_CARDS_DIR / f"{template_name}.md"]
    for path in candidates:
        if path.is_file():
            return path
    available = sorted(p.name for p in MODEL_CARDS_DIR.glob("*.md")) if MODEL_CARDS_DIR.is_dir() else []
    raise FileNotFoundError(
        f"Model card template {template_name!r} not found; available in {MODEL_CARDS_DIR}: "
        f"{', '.join(available) or 'none'}."
    )


def eval_results_from_metrics(
    metrics: Mapping[str, Any],
    specs: Mapping[str, tuple[str, str]],
    *,
    task_type: str,
    task_name: str,
    dataset_type: str,
    dataset_name: str,
    dataset_split: str | None = "validation",
) -> list[EvalResult]:
    """One `EvalResult` per metric present in `metrics`: `specs` maps metric key → (metric_type, metric display name).

    Non-finite values are skipped (the Hub rejects NaN in metadata).
    """
    results = []
    for key, (metric_type, metric_name) in specs.items():
        value = metrics.get(key)
        if (
            value is None
            or not isinstance(value, (int, float))
            or value != value
            or value in (float("inf"), float("-inf"))
        ):
            continue
        results.append(
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=dataset_split,
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=round(float(value), 6),
            )
        )
    return results


def render_model_card(
    template_name: str,
    metrics: Mapping[str, Any],
    *,
    model_name: str,
    eval_results: Sequence[EvalResult] = (),
    tags: Iterable[str] = ("trajfm", "trajectory", "h3"),
    license: str = "apache-2.0",
    pipeline_tag: str | None = None,
    datasets: Sequence[str] | None = None,
    base_model: str | None = None,
    **fields: Any,
) -> ModelCard:
    """Render `model_cards/<template_name>` (Jinja2) with `metrics` and `fields`; metadata holds `eval_results`.

    The template sees `model_name`, `metrics` (the dict) and every keyword in `fields`.
    """
    card_data = ModelCardData(
        model_name=model_name,
        license=license,
        library_name="transformers",
        tags=list(tags),
        pipeline_tag=pipeline_tag,
        datasets=list(datasets) if datasets else None,
        base_model=base_model,
        eval_results=list(eval_results) or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path(template_name)),
        model_name=model_name,
        metrics=dict(metrics),
        **fields,
    )


def push_checkpoint(
    output_dir: str | Path,
    repo_id: str,
    card: ModelCard | None = None,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload trajfm checkpoint",
    ignore_patterns: Iterable[str] = DEFAULT_IGNORE_PATTERNS,
) -> str:
    """Create `repo_id` if needed, upload `output_dir` (minus `ignore_patterns` and README.md), then push the card.

    `card` defaults to `output_dir/README.md`. Returns the repo id the server confirmed (it may add the namespace).
    """
    check_push_possible(True, repo_id)
    output_dir = Path(output_dir)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    api.upload_folder(
        folder_path=output_dir,
        repo_id=repo_id,
        revision=revision,
        commit_message=commit_message,
        ignore_patterns=[*ignore_patterns, "README.md"],
    )
    readme = output_dir / "README.md"
    if card is None and readme.is_file():
        card = ModelCard.load(readme)
    if card is not None:  # last: any earlier push_to_hub would have overwritten README.md
        card.push_to_hub(repo_id, token=token, revision=revision, commit_message="Model card")
    return repo_id


__all__ = [
    "DEFAULT_IGNORE_PATTERNS",
    "MODEL_CARDS_DIR",
    "HubOfflineError",
    "check_push_possible",
    "eval_results_from_metrics",
    "is_offline",
    "push_checkpoint",
    "render_model_card",
    "template_path",
]
