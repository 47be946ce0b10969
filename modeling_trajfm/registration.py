"""The one place where trajfm registers with transformers' Auto classes and pipeline registry (run once, on
`import modeling_trajfm`).

Order: the config type first (every other registration is keyed on it), then the model heads, then the tokenizer,
then `register_for_auto_class` on each, so `save_pretrained` / `push_to_hub` copy the code files next to the weights,
then the trajectory pipelines.

`TrajBertForHexagonPrediction` is a sequence classifier over candidate cells: `AutoModelForSequenceClassification`
picks it for checkpoints whose `config.architectures` name it (transformers chooses among a registered tuple by
architecture), and `TrajBertForSequenceClassification` otherwise.
"""

from __future__ import annotations

from typing import Any

import transformers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from transformers.pipelines import PIPELINE_REGISTRY

from tokenization_trajfm import TrajTokenizer

from .configuration_trajbert import TrajBertConfig
from .modeling_trajbert import (
    AUTO_MAP,
    TrajBertForHexagonPrediction,
    TrajBertForMaskedTrajectoryModeling,
    TrajBertForSequenceClassification,
    TrajBertModel,
)
from .pipelines import PIPELINE_TASKS

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
    AutoModelForSequenceClassification.register(
        TrajBertConfig, (TrajBertForSequenceClassification, TrajBertForHexagonPrediction), exist_ok=True
    )
    AutoTokenizer.register(TrajBertConfig, tokenizer_class=TrajTokenizer, exist_ok=True)
    for auto_class, cls in AUTO_CLASSES.items():
        cls.register_for_auto_class(auto_class)
    # its checkpoints' auto_map then sends AutoModelForSequenceClassification (remote code) to this head
    TrajBertForHexagonPrediction.register_for_auto_class("AutoModelForSequenceClassification")
    TrajTokenizer.register_for_auto_class("AutoTokenizer")
    for task, (pipeline_class, auto_class, _) in PIPELINE_TASKS.items():
        if PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is not pipeline_class:
            PIPELINE_REGISTRY.register_pipeline(task, pipeline_class, pt_model=getattr(transformers, auto_class))


def set_auto_map(
    config: TrajBertConfig,
    tokenizer_class_name: str | None = "TrajTokenizer",
    tokenizer_module: str = "tokenization_trajfm",
) -> dict[str, Any]:
    """Write a complete `config.auto_map` (every Auto head plus the tokenizer) and return it.

    TrajBert models do this themselves on every save; call it for a config saved on its own, or to name another
    tokenizer (`tokenizer_class_name=None` leaves the tokenizer out).
    """
    auto_map: dict[str, Any] = {key: value for key, value in AUTO_MAP.items() if key != "AutoTokenizer"}
    if tokenizer_class_name is not None:
        auto_map["AutoTokenizer"] = [f"{tokenizer_module}.{tokenizer_class_name}", None]
    config.auto_map = auto_map
    return auto_map
