"""TrajBert models, config, collators and the Python API (`pretrain`, `finetune`, `compare`).

Importing this package registers `trajbert`, `TrajTokenizer` and the trajectory pipelines with transformers, once
(`modeling_trajfm.registration`). Every saved checkpoint lists every head, the tokenizer and its pipelines in
`config.json` for `trust_remote_code=True` users. `AutoModelForSequenceClassification` loads
`TrajBertForHexagonPrediction` from its checkpoints.
"""

from tokenization_trajfm import TrajTokenizer

from .configuration_trajbert import TrajBertConfig
from .data_collator import DataCollatorForWholeHexagonMasking, DataCollatorWithTrajectoryPadding
from .modeling_trajbert import (
    TrajBertForHexagonPrediction,
    TrajBertForMaskedTrajectoryModeling,
    TrajBertForSequenceClassification,
    TrajBertModel,
    TrajBertPreTrainedModel,
)
from .registration import AUTO_CLASSES, register, set_auto_map

register()

from .finetuning import CompareResult, FinetuneResult, FinetuneTrainingArguments, compare, finetune  # noqa: E402
from .pretraining import (  # noqa: E402
    MTMArguments,
    MTMModelArguments,
    MTMTrainingArguments,
    PretrainingResult,
    pretrain,
)

__all__ = [
    "AUTO_CLASSES",
    "CompareResult",
    "DataCollatorForWholeHexagonMasking",
    "DataCollatorWithTrajectoryPadding",
    "FinetuneResult",
    "FinetuneTrainingArguments",
    "MTMArguments",
    "MTMModelArguments",
    "MTMTrainingArguments",
    "PretrainingResult",
    "TrajBertConfig",
    "TrajBertForHexagonPrediction",
    "TrajBertForMaskedTrajectoryModeling",
    "TrajBertForSequenceClassification",
    "TrajBertModel",
    "TrajBertPreTrainedModel",
    "TrajTokenizer",
    "compare",
    "finetune",
    "pretrain",
    "set_auto_map",
]
