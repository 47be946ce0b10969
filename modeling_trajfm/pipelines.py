# Copyright 2025 The trajfm authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Trajectory pipelines: fill-mask over visits, feature extraction, destination (hexagon) prediction, classification.

`import modeling_trajfm` registers them with transformers' pipeline registry; every saved checkpoint also lists the
ones that fit its head in `config.custom_pipelines`, with this file copied next to the weights, so
`pipeline(task, model=path, trust_remote_code=True)` works without the package. Hence only third-party imports here.

Inputs, everywhere: one trajectory in any form `TrajTokenizer` takes (a list of `(lat, lon[, time])` points, a mapping
of `latitude`/`longitude`[/`timestamp`] columns, an `(n, 2|3)` array), or a mapping of tokenizer arguments
(`{"cells": [...], "timestamps": [...]}`, pairs with `{"trajectory": a, "pair": b}` or `pair_cells=`); a list of
them is a batch and gives a list of results.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from transformers import Pipeline

#: Keys that make a mapping a set of tokenizer arguments rather than a mapping of point columns.
_ARGUMENT_KEYS = ("trajectory", "cells")


def _is_arguments(item: Any) -> bool:
    return isinstance(item, Mapping) and any(key in item for key in _ARGUMENT_KEYS)


def _check_not_text(item: Any) -> None:
    if isinstance(item, str) or (isinstance(item, (list, tuple)) and item and all(isinstance(x, str) for x in item)):
        raise TypeError(
            f"Trajectory pipelines take trajectories, not text (got {item!r:.60}): pass (lat, lon[, time]) points, a "
            "mapping of latitude/longitude[/timestamp] columns, or {'cells': [H3 cells], 'timestamps': [...]}."
        )


class TrajectoryPipeline(Pipeline):
    """One trajectory in, one result out; a list of trajectories in, a list of results out."""

    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        _check_not_text(inputs)
        batched = not isinstance(inputs, Mapping) and self.tokenizer.is_batch(inputs)
        outputs = super().__call__(list(inputs) if batched else [inputs], **kwargs)
        return outputs if batched else outputs[0]

    def _sanitize_parameters(self, top_k: int | None = None, **kwargs: Any):
        postprocess = {"top_k": top_k} if top_k is not None else {}
        return {}, {}, postprocess

    def preprocess(self, item: Any) -> dict[str, torch.Tensor]:
        _check_not_text(item)
        if _is_arguments(item):
            arguments = dict(item)
            return self.tokenizer(arguments.pop("trajectory", None), return_tensors="pt", **arguments)
        return self.tokenizer(item, return_tensors="pt")

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"logits": self.model(**model_inputs).logits}

    def _top(self, logits: torch.Tensor, top_k: int) -> tuple[list[float], list[int]]:
        scores, indices = logits.float().softmax(-1).topk(min(top_k, logits.shape[-1]))
        return scores.tolist(), indices.tolist()


class TrajectoryClassificationPipeline(TrajectoryPipeline):
    """`TrajBertForSequenceClassification` (user association, next sub-trajectory): the `top_k` labels with softmax
    scores, `[{"label": ..., "score": ...}, ...]`. Pairs: `{"trajectory": a, "pair": b}`."""

    def postprocess(self, model_outputs: dict[str, torch.Tensor], top_k: int = 5) -> list[dict[str, Any]]:
        scores, indices = self._top(model_outputs["logits"][0], top_k)
        return [{"label": self.model.config.id2label[i], "score": s} for s, i in zip(scores, indices)]


class TrajectoryDestinationPipeline(TrajectoryPipeline):
    """`TrajBertForHexagonPrediction` (destination): the `top_k` candidate cells with their centres and softmax
    scores, `[{"cell": "882a...", "latitude": ..., "longitude": ..., "score": ...}, ...]`."""

    def postprocess(self, model_outputs: dict[str, torch.Tensor], top_k: int = 5) -> list[dict[str, Any]]:
        scores, indices = self._top(model_outputs["logits"][0], top_k)
        cells = [self.model.config.id2label[i] for i in indices]
        return [
            {"cell": cell, "latitude": float(lat), "longitude": float(lon), "score": score}
            for cell, (lat, lon), score in zip(cells, self.tokenizer.cell_coordinates(cells), scores)
        ]


class TrajectoryFeatureExtractionPipeline(TrajectoryPipeline):
    """One vector per trajectory: the mean of the last hidden states over its hexagon tokens (special tokens left
    out; MTM trains no pooler). With `per_hexagon=True`: `{"embedding": [...], "cells": [...],
    "hexagon_embeddings": [[...], ...]}`, one mean vector per visit (hexagon) in order."""

    def _sanitize_parameters(self, per_hexagon: bool | None = None, **kwargs: Any):
        return {}, {}, {"per_hexagon": per_hexagon} if per_hexagon is not None else {}

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hidden = self.model(**model_inputs).last_hidden_state
        return {"hidden": hidden, "hexagon_ids": model_inputs["hexagon_ids"], "input_ids": model_inputs["input_ids"]}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], per_hexagon: bool = False) -> Any:
        hidden, hexagons = model_outputs["hidden"][0].float(), model_outputs["hexagon_ids"][0]
        embedding = hidden[hexagons > 0].mean(0).tolist()
        if not per_hexagon:
            return embedding
        return {
            "embedding": embedding,
            "cells": self.tokenizer.decode_cells(model_outputs["input_ids"][0]),
            "hexagon_embeddings": [hidden[hexagons == h].mean(0).tolist() for h in hexagons.unique() if h > 0],
        }


class TrajectoryFillMaskPipeline(TrajectoryPipeline):
    """Predicts masked visits of a trajectory (`TrajBertForMaskedTrajectoryModeling`).

    Mark a visit to predict with `None`: a `None` point (or `(None, None, time)`, to say when the visit happened) in a
    list of points, or a `None` cell in `{"cells": [...], "timestamps": [...]}`; visits must be in time order. Returns,
    per masked visit in order, `{"visit": index, "predictions": [{"cell", "latitude", "longitude", "score"}, ...]}`.

    A hexagon takes one to `tokenizer.max_cell_tokens` sub-tokens and the model, trained on whole-hexagon masks, is told
    how many by the number of `[MASK]` tokens. So each length is tried (one row of the batch each); a candidate is a
    valid cell spelt with exactly that many sub-tokens, scored by the product of their probabilities (beam search
    over the masked positions). Scores are comparable across lengths but do not sum to one.
    """

    def preprocess(self, item: Any) -> dict[str, Any]:
        _check_not_text(item)
        cells, times, masked = self._visits(item)
        row = {key: values[0] for key, values in self.tokenizer.encode_visits([(cells, times)]).items()}
        rows, positions = [], []
        for length in range(1, self.tokenizer.max_cell_tokens + 1):
            spliced, where = self._splice(row, set(masked), length)
            if len(spliced["input_ids"]) > self.tokenizer.model_max_length:
                raise ValueError(
                    f"The trajectory takes {len(spliced['input_ids'])} tokens with its masks, more than "
                    f"model_max_length={self.tokenizer.model_max_length}: give fewer visits."
                )
            rows.append(spliced)
            positions.append(where)
        batch = self.tokenizer.pad(rows, return_tensors="pt")
        return {"model_inputs": batch, "masked": masked, "positions": positions}

    def _forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        logits = self.model(**inputs["model_inputs"]).logits
        log_probs = logits.float().log_softmax(-1)
        return {"log_probs": log_probs, "masked": inputs["masked"], "positions": inputs["positions"]}

    def postprocess(self, model_outputs: dict[str, Any], top_k: int = 5) -> list[dict[str, Any]]:
        vocab = self.tokenizer.get_vocab()
        special = set(self.tokenizer.all_special_ids)
        continuation = torch.zeros(len(vocab), dtype=torch.bool)
        continuation[[i for token, i in vocab.items() if token.startswith("##")]] = True
        initial = ~continuation
        initial[list(special)] = False
        log_probs = model_outputs["log_probs"]
        results = []
        for k, visit in enumerate(model_outputs["masked"]):
            found: dict[str, float] = {}
            for row, where in enumerate(model_outputs["positions"]):
                for ids, score in self._beam(log_probs[row], where[k], initial, continuation, max(4 * top_k, 16)):
                    cells = self.tokenizer.decode_cells(ids, strict=False)
                    if len(cells) == 1 and cells[0] is not None and self.tokenizer.cell_token_ids(cells)[0] == ids:
                        found[cells[0]] = max(found.get(cells[0], 0.0), score)
            best = sorted(found.items(), key=lambda item: -item[1])[:top_k]
            centres = self.tokenizer.cell_coordinates([cell for cell, _ in best]) if best else []
            predictions = [
                {"cell": cell, "latitude": float(lat), "longitude": float(lon), "score": score}
                for (cell, score), (lat, lon) in zip(best, centres)
            ]
            results.append({"visit": visit, "predictions": predictions})
        return results

    @staticmethod
    def _beam(log_probs: torch.Tensor, positions: list[int], initial: torch.Tensor, continuation: torch.Tensor,
              width: int) -> list[tuple[list[int], float]]:
        """The `width` most probable spellings over `positions`: a word-initial piece, then continuation pieces."""
        beams: list[tuple[list[int], float]] = [([], 0.0)]
        for step, position in enumerate(positions):
            allowed = initial if step == 0 else continuation
            scores = log_probs[position].masked_fill(~allowed, -torch.inf)
            top = scores.topk(min(width, int(allowed.sum())))
            extended = [
                (ids + [i], total + s)
                for ids, total in beams
                for s, i in zip(top.values.tolist(), top.indices.tolist())
            ]
            beams = sorted(extended, key=lambda beam: -beam[1])[:width]
        return [(ids, float(np.exp(total))) for ids, total in beams]

    def _visits(self, item: Any) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
        """(visit cells with a stand-in at masked visits, visit times or None, masked visit indices)."""
        if _is_arguments(item):
            cells = list(item["cells"])
            times = item.get("timestamps")
            entries = [(c is None, c, t) for c, t in zip(cells, times if times is not None else [None] * len(cells))]

            def known(run: list) -> tuple[np.ndarray, np.ndarray | None]:
                run_times = None if times is None else [t for _, t in run]
                return self.tokenizer.to_visits(cells=[c for c, _ in run], timestamps=run_times)
        else:
            entries = [(p is None or p[0] is None, p, p[2] if p is not None and len(p) > 2 else None) for p in item]

            def known(run: list) -> tuple[np.ndarray, np.ndarray | None]:
                return self.tokenizer.to_visits([p for p, _ in run])

        parts: list[tuple[np.ndarray | None, np.ndarray | None, Any]] = []  # (cells, times, masked visit's time)
        run: list = []
        for is_masked, value, time in [*entries, (True, None, None)]:
            if not is_masked:
                run.append((value, time))
                continue
            if run:
                parts.append((*known(run), None))
                run = []
            parts.append((None, None, time))
        parts.pop()  # the sentinel
        known_cells = [c for c, _, _ in parts if c is not None]
        if not known_cells or len(known_cells) == len(parts):
            raise ValueError("Mark at least one visit to predict with None, and keep at least one visit known.")
        stand_in = known_cells[0][:1]
        cells, times, masked = [], [], []
        for part_cells, part_times, masked_time in parts:
            if part_cells is None:
                masked.append(sum(c.size for c in cells))
                part_cells = stand_in
                part_times = None if masked_time is None else self.tokenizer.to_visits(
                    cells=stand_in, timestamps=[masked_time])[1]
            cells.append(part_cells)
            times.append(part_times)
        if any(t is None for t in times):
            return np.concatenate(cells), None, masked
        times = np.concatenate(times)
        if (np.diff(times) < 0).any():
            raise ValueError("Give the visits of a trajectory to fill in time order.")
        return np.concatenate(cells), times, masked

    def _splice(self, row: dict[str, list[int]], masked: set[int], length: int) -> tuple[dict[str, list[int]], list]:
        """`row` with each masked visit's tokens replaced by `length` [MASK] tokens; and the masks' positions."""
        out: dict[str, list[int]] = {key: [] for key in row}
        where: dict[int, list[int]] = {}
        max_level = self.model.config.max_levels - 1
        for j, hexagon in enumerate(row["hexagon_ids"]):
            visit = hexagon - 1
            if hexagon == 0 or visit not in masked:
                for key in row:
                    out[key].append(row[key][j])
            elif row["level_ids"][j] == 1:  # first sub-token of the masked visit: emit its masks
                where[visit] = list(range(len(out["input_ids"]), len(out["input_ids"]) + length))
                for level in range(1, length + 1):
                    for key in row:
                        out[key].append(row[key][j])
                    out["input_ids"][-1] = self.tokenizer.mask_token_id
                    out["level_ids"][-1] = min(level, max_level)
        out["attention_mask"] = [1] * len(out["input_ids"])
        return out, [where[visit] for visit in sorted(where)]


#: task → (pipeline class, transformers Auto class that loads its model, model classes it serves).
PIPELINE_TASKS: dict[str, tuple[type, str, tuple[str, ...]]] = {
    "trajectory-fill-mask": (
        TrajectoryFillMaskPipeline,
        "AutoModelForMaskedLM",
        ("TrajBertForMaskedTrajectoryModeling",),
    ),
    "trajectory-feature-extraction": (
        TrajectoryFeatureExtractionPipeline,
        "AutoModel",
        (
            "TrajBertModel",
            "TrajBertForMaskedTrajectoryModeling",
            "TrajBertForSequenceClassification",
            "TrajBertForHexagonPrediction",
        ),
    ),
    "trajectory-destination": (
        TrajectoryDestinationPipeline,
        "AutoModelForSequenceClassification",
        ("TrajBertForHexagonPrediction",),
    ),
    "trajectory-classification": (
        TrajectoryClassificationPipeline,
        "AutoModelForSequenceClassification",
        ("TrajBertForSequenceClassification",),
    ),
}


def custom_pipelines_for(model_class_name: str) -> dict[str, dict[str, Any]]:
    """`config.custom_pipelines` of a checkpoint of `model_class_name`: the tasks it serves, as remote code."""
    module = __name__.rsplit(".", 1)[-1]
    return {
        task: {"impl": f"{module}.{pipeline_class.__name__}", "pt": [auto_class]}
        for task, (pipeline_class, auto_class, served) in PIPELINE_TASKS.items()
        if model_class_name in served
    }
