"""TrajBert models, config and collators, registered with the transformers Auto classes.

Importing this package:

- registers `trajbert` with `AutoConfig`, `AutoModel`, `AutoModelForMaskedLM` and `AutoModelForSequenceClassification`
  (and `AutoTokenizer` once `tokenization_trajfm.TrajTokenizer` is importable);
- calls `register_for_auto_class` on the config and those model classes, so `save_pretrained` / `push_to_hub` copy
  `configuration_trajbert.py` and `modeling_trajbert.py` next to the weights.

Before saving or pushing a checkpoint meant for `trust_remote_code=True` users, call `set_auto_map(model.config)` so
that `config.json` lists every head and the tokenizer (transformers only records the class being saved).
`TrajBertForHexagonPrediction` has no matching Auto class: load it with the class itself.
"""

from typing import Any

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from .configuration_trajbert import TrajBertConfig
from .data_collator import DataCollatorForWholeHexagonMasking, DataCollatorWithTrajectoryPadding
from .modeling_trajbert import (
    TrajBertForHexagonPrediction,
    TrajBertForMaskedTrajectoryModeling,
    TrajBertForSequenceClassification,
    TrajBertModel,
    TrajBertPreTrainedModel,
)

try:
    from tokenization_trajfm import TrajTokenizer
except ImportError:  # the tokenizer package is optional for the model code
    TrajTokenizer = None

# Auto class name -> class, in the order they appear in `config.auto_map`.
AUTO_CLASSES: dict[str, type] = {
    "AutoConfig": TrajBertConfig,
    "AutoModel": TrajBertModel,
    "AutoModelForMaskedLM": TrajBertForMaskedTrajectoryModeling,
    "AutoModelForSequenceClassification": TrajBertForSequenceClassification,
}


def _register() -> None:
    AutoConfig.register(TrajBertConfig.model_type, TrajBertConfig, exist_ok=True)
    AutoModel.register(TrajBertConfig, TrajBertModel, exist_ok=True)
    AutoModelForMaskedLM.register(TrajBertConfig, TrajBertForMaskedTrajectoryModeling, exist_ok=True)
    AutoModelForSequenceClassification.register(TrajBertConfig, TrajBertForSequenceClassification, exist_ok=True)
    if TrajTokenizer is not None:
        AutoTokenizer.register(TrajBertConfig, tokenizer_class=TrajTokenizer, exist_ok=True)
    for auto_class, cls in AUTO_CLASSES.items():
        cls.register_for_auto_class(auto_class)


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


_register()

__all__ = [
    "TrajBertConfig",
    "TrajBertPreTrainedModel",
    "TrajBertModel",
    "TrajBertForMaskedTrajectoryModeling",
    "TrajBertForSequenceClassification",
    "TrajBertForHexagonPrediction",
    "DataCollatorForWholeHexagonMasking",
    "DataCollatorWithTrajectoryPadding",
    "set_auto_map",
    "AUTO_CLASSES",
    "TrajTokenizer",
]
