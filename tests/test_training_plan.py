"""The reference schedule, cadence, partial batch and selection rule, computed from configs/lora-and-friends.toml."""

import math

import pytest

from loraexp.contracts import load_contract
from loraexp.errors import UserError
from loraexp.training.loop import select_checkpoint
from loraexp.training.schedule import LrSchedule, batch_indices, cadence_steps, make_plan, steps_per_epoch

REFERENCE = load_contract("configs/lora-and-friends.toml")
TRAIN_ROWS = 25_348  # reference split: 25,348 train / 2,818 validation


def test_reference_steps_and_partial_batch():
    assert steps_per_epoch(TRAIN_ROWS, 8) == 3169
    last = batch_indices(TRAIN_ROWS, 8, 3169, seed=0, order="file")
    assert last == list(range(25_344, 25_348))  # the last batch of the epoch has 4 rows, no wraparound
    first_of_epoch_2 = batch_indices(TRAIN_ROWS, 8, 3170, seed=0, order="file")
    assert first_of_epoch_2 == list(range(8))


def test_shuffled_epochs_cover_every_row_once_and_differ_by_seed_and_epoch():
    n, size = 29, 8
    epoch0 = [i for step in range(1, 5) for i in batch_indices(n, size, step, seed=3, order="shuffle")]
    epoch1 = [i for step in range(5, 9) for i in batch_indices(n, size, step, seed=3, order="shuffle")]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n))
    assert epoch0 != epoch1
    assert epoch0 != [i for step in range(1, 5) for i in batch_indices(n, size, step, seed=4, order="shuffle")]


def test_reference_lr_schedule():
    plan = make_plan(REFERENCE, 3e-4, 8, TRAIN_ROWS, seed=0)
    assert plan.total_steps == 6338
    assert plan.schedule.warmup_steps == 190
    lr = plan.schedule.at
    assert lr(0) == 0.0
    assert lr(190) == pytest.approx(3e-4)
    assert lr(95) == pytest.approx(1.5e-4)
    progress = (3169 - 190) / (6338 - 190)
    assert lr(3169) == pytest.approx(3e-5 + (3e-4 - 3e-5) * 0.5 * (1 + math.cos(math.pi * progress)))
    assert lr(6338) == pytest.approx(3e-5)
    assert all(lr(s) >= lr(s + 1) for s in range(190, 6338))


def test_reference_cadence():
    spe = steps_per_epoch(TRAIN_ROWS, 8)
    assert cadence_steps(REFERENCE.train, spe, 2 * spe) == [1000, 2000, 3169, 4000, 5000, 6000, 6338]


def test_cadence_step_beyond_the_last_step_is_an_error():
    train = REFERENCE.train.model_copy(update={"extra_eval_steps": (7000,)})
    with pytest.raises(UserError, match="outside 1..6338"):
        cadence_steps(train, 3169, 6338)


def test_selection_lowest_nll_and_tie_goes_to_later_step():
    records = [{"step": 1000, "val_nll": 0.5}, {"step": 2000, "val_nll": 0.4}, {"step": 3169, "val_nll": 0.4}, {"step": 4000, "val_nll": 0.45}]
    assert select_checkpoint(records)["step"] == 3169
    assert select_checkpoint(records[:2])["step"] == 2000
    with pytest.raises(UserError):
        select_checkpoint([])


def test_schedule_without_warmup_starts_at_peak():
    assert LrSchedule(1e-3, 0, 10, 0.1).at(1) < 1e-3 + 1e-12
    assert LrSchedule(1e-3, 0, 10, 0.1).at(10) == pytest.approx(1e-4)
