"""Rendered rows -> `tinker.Datum`, and the token-weighted NLL read back from a cross_entropy output.

A rendered row holds the full sequence `tokens` and one loss weight per token (0 on the prompt,
1 on the answer). Tinker's cross_entropy predicts `target_tokens[i]` from `model_input[: i + 1]`,
so the datum is the sequence shifted by one: input = tokens[:-1], targets = tokens[1:],
weights = weights[1:] (the same shift as cookbook `datum_from_model_input_weights`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tinker

from loraexp.errors import UserError


def datum_from_row(row: dict[str, Any]) -> tinker.Datum:
    """One rendered row (`tokens`, `weights`) as a cross_entropy Datum built through tinker's own types."""
    tokens, weights = row["tokens"], row["weights"]
    if len(tokens) != len(weights) or len(tokens) < 2:
        raise UserError(
            f"row {row.get('row_id', '?')}: needs >= 2 tokens and one weight per token "
            f"(got {len(tokens)} tokens, {len(weights)} weights); rerun `loraexp render`"
        )
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(list(tokens[:-1])),
        loss_fn_inputs={
            "target_tokens": tinker.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64)),
            "weights": tinker.TensorData.from_numpy(np.asarray(weights[1:], dtype=np.float32)),
        },
    )


def mean_nll(fwd_output: tinker.ForwardBackwardOutput, datums: Sequence[tinker.Datum]) -> tuple[float, float]:
    """(-sum w*logp, sum w) over the datums of one forward/forward_backward call; divide for the mean NLL."""
    if len(fwd_output.loss_fn_outputs) != len(datums):
        raise ValueError(f"{len(fwd_output.loss_fn_outputs)} loss outputs for {len(datums)} datums")
    nll_sum = weight_sum = 0.0
    for output, datum in zip(fwd_output.loss_fn_outputs, datums):
        logprobs = output["logprobs"].to_numpy().astype(np.float64)
        weights = datum.loss_fn_inputs["weights"].to_numpy().astype(np.float64)
        nll_sum -= float(np.dot(logprobs, weights))
        weight_sum += float(weights.sum())
    return nll_sum, weight_sum
