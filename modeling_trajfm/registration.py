"""The one place where trajfm registers with transformers' Auto classes (run once, on `import modeling_trajfm`).

Order: the config type first (every other registration is keyed on it), then the model heads, then the tokenizer,
then `register_for_auto_class` on each, so `save_pretrained` / `push_to_hub` copy the code files next to the weights.
"""

from __future__ import annotations

from typing import Any

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from tokenization_trajfm import TrajTokenizer

from .configuration_trajbert import TrajBertConfig
from .modeling_trajbert import (
    TrajBertForMaskedTrajectoryModeling,
    TrajBertForSequenceClassification,
    TrajBertModel,
)

# Auto class name -> class, in the order they appear in `config.auto_map`.
AUTO_CLASSES: dict[str, type] = {
    "AutoConfig": TrajBertConfig,
    "AutoModel": TrajBertModel,
    "AutoModelForMaskedLM": TrajBertForMaskedTrajectoryModeling,
    "AutoModelForSequenceClassification": TrajBertForSequenceClassification,
}


def register() -> None:
    """Register config, models and tokenizer with the Auto classes (idempotent)."""
    AutoConfig.register(TrajBertConfig.model_type, TrajBertConfig, exist_ok=True)
    AutoModel.register(TrajBertConfig, TrajBertModel, exist_ok=True)
    AutoModelForMaskedLM.register(TrajBertConfig, TrajBertForMaskedTrajectoryModeling, exist_ok=True)
    AutoModelForSequenceClassification.register(TrajBertConfig, TrajBertForSequenceClassification, exist_ok=True)
    AutoTokenizer.register(TrajBertConfig, tokenizer_class=TrajTokenizer, exist_ok=True)
    for auto_class, cls in AUTO_CLASSES.items():
        cls.register_for_auto_class(auto_class)
    TrajTokenizer.register_for_auto_class("AutoTokenizer")


def set_auto_map(
    config: TrajBertConfig,
    tokenizer_class_name: str | None = "TrajTokenizer",
    tokenizer_module: str = "tokenization_trajfm",
) -> dict[str, Any]:
    """Write a complete `config.auto_map` (every Auto head plus the tokenizer) and return it.

    `save_pretrained` only adds the class being saved, so a checkpoint saved from the MTM model would otherwise not load
    with `AutoModelForSequenceClassification.from_pretrained(..., trust_remote_code=True)`. Call this before
    `save_pretrained` / `push_to_hub` (Trainer included). Pass `tokenizer_class_name=None` to leave the tokenizer out.
    """
    auto_map: dict[str, Any] = {
        auto_class: f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}" for auto_class, cls in AUTO_CLASSES.items()
    }
    if tokenizer_class_name is not None:
        auto_map["AutoTokenizer"] = [f"{tokenizer_module}.{tokenizer_class_name}", None]
    config.auto_map = auto_map
    return auto_map
