"""The plan of a training run: LR schedule, cadence, batches, and the request shape, all from the contract.

Steps are 1-based: step s is the s-th optimizer step. Reference numbers: 25,348 rows / batch 8 ->
3,169 steps per epoch (the last batch has 4 rows), 6,338 steps in 2 epochs, 190 warmup steps,
cosine from 3e-4 to 3e-5, validation + save_state at 1000, 2000, 3169, 4000, 5000, 6000, 6338.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import tinker

from loraexp.contracts import AdamSection, EpochOrder, RequestShape, TrainSection
from loraexp.errors import UserError

if TYPE_CHECKING:
    from loraexp.contracts import Contract


@dataclass(frozen=True)
class LrSchedule:
    """Linear warmup from 0 to `peak` over `warmup_steps`, then cosine down to `peak * min_lr_ratio` at `total_steps`."""

    peak: float
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float

    @classmethod
    def for_run(cls, train: TrainSection, peak: float, total_steps: int) -> "LrSchedule":
        # reference: round(0.03 * 6,338) = 190 warmup steps
        return cls(peak, round(train.warmup_fraction * total_steps), total_steps, train.min_lr_ratio)

    def at(self, step: int) -> float:
        if step <= self.warmup_steps:
            return self.peak * step / self.warmup_steps if self.warmup_steps else self.peak
        floor = self.peak * self.min_lr_ratio
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / decay_steps, 1.0)
        return floor + (self.peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """Batches per epoch with the last partial batch kept (25,348 rows / 8 -> 3,169; the last has 4 rows)."""
    return math.ceil(n_rows / batch_size)


def cadence_steps(train: TrainSection, spe: int, total_steps: int) -> list[int]:
    """Validation + save_state steps: every `eval_every` steps and `extra_eval_steps`, plus every epoch end,
    minus configured steps within `epoch_end_margin` of an epoch end (reference: 1000, 2000, 3169, 4000, 5000, 6000, 6338)."""
    beyond = [s for s in train.extra_eval_steps if s > total_steps or s <= 0]
    if beyond:
        raise UserError(f"train.extra_eval_steps {beyond} outside 1..{total_steps} (the last step); remove them from the config")
    epoch_ends = sorted({min(spe * (epoch + 1), total_steps) for epoch in range(math.ceil(total_steps / spe))})
    configured = set(range(train.eval_every, total_steps + 1, train.eval_every)) | set(train.extra_eval_steps)
    kept = {s for s in configured if all(abs(s - end) > train.epoch_end_margin for end in epoch_ends)}
    return sorted(kept | set(epoch_ends))


def batch_indices(n_rows: int, batch_size: int, step: int, seed: int, order: EpochOrder) -> list[int]:
    """Row indices of `step` (1-based): epochs in file order or reshuffled per (seed, epoch); no wraparound."""
    spe = steps_per_epoch(n_rows, batch_size)
    epoch, position = divmod(step - 1, spe)
    if order == "shuffle":
        permutation = np.random.default_rng([seed, epoch]).permutation(n_rows)
    else:
        permutation = np.arange(n_rows)
    return permutation[position * batch_size : (position + 1) * batch_size].tolist()


@dataclass(frozen=True)
class LoopPlan:
    """Everything the loop needs besides the client and the data."""

    total_steps: int
    batch_size: int
    schedule: LrSchedule
    cadence: tuple[int, ...]
    request_shape: RequestShape
    submit_ahead: int
    adam: AdamSection
    seed: int
    epoch_order: EpochOrder
    val_batch_size: int
    train_price_per_token: float
    ttl_seconds: int | None

    def adam_params(self, step: int) -> tinker.AdamParams:
        return tinker.AdamParams(
            learning_rate=self.schedule.at(step), beta1=self.adam.beta1, beta2=self.adam.beta2,
            eps=self.adam.eps, weight_decay=self.adam.weight_decay, grad_clip_norm=self.adam.grad_clip_norm,
        )


def make_plan(contract: "Contract", peak_lr: float, batch_size: int, n_train_rows: int, seed: int, total_steps: int | None = None, cadence: Sequence[int] | None = None) -> LoopPlan:
    """The loop plan of a run: total steps from epochs x steps-per-epoch unless given, cadence from the contract unless given."""
    train = contract.train
    spe = steps_per_epoch(n_train_rows, batch_size)
    total = total_steps if total_steps is not None else spe * train.epochs
    return LoopPlan(
        total_steps=total, batch_size=batch_size, schedule=LrSchedule.for_run(train, peak_lr, total),
        cadence=tuple(cadence if cadence is not None else cadence_steps(train, spe, total)),
        request_shape=train.request_shape, submit_ahead=train.submit_ahead, adam=train.adam, seed=seed,
        epoch_order=train.epoch_order, val_batch_size=train.val_batch_size,
        train_price_per_token=contract.prices.train_per_million / 1e6, ttl_seconds=train.checkpoint_ttl_seconds,
    )
