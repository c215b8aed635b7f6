"""The learning-rate schedule by hand: cosine per epoch, linear warm-up per step."""

import pytest

from raydet.train.schedule import cosine_lr, warmup_cosine_lr


def test_cosine_schedule_by_hand():
    # 5 epochs: t = e / 4; lr * (0.05 + 0.95 * (1 + cos(pi t)) / 2)
    assert cosine_lr(1.0, 0, 5) == pytest.approx(1.0)
    assert cosine_lr(1.0, 2, 5) == pytest.approx(0.05 + 0.95 * 0.5)  # cos(pi/2) = 0 -> 0.525
    assert cosine_lr(1.0, 4, 5) == pytest.approx(0.05)


def test_warmup_by_hand():
    # 10 steps per epoch, warm-up 1.5 epochs = 15 steps: step k (0-based, counted over epochs) runs at (k + 1) / 15
    # of the epoch's cosine rate; from step 14 on, the plain cosine rate.
    assert warmup_cosine_lr(1.0, 0, 0, 10, 5, 1.5) == pytest.approx(1 / 15)
    assert warmup_cosine_lr(1.0, 0, 9, 10, 5, 1.5) == pytest.approx(10 / 15)
    assert warmup_cosine_lr(1.0, 1, 2, 10, 5, 1.5) == pytest.approx(cosine_lr(1.0, 1, 5) * 13 / 15)
    assert warmup_cosine_lr(1.0, 1, 4, 10, 5, 1.5) == pytest.approx(cosine_lr(1.0, 1, 5))
    assert warmup_cosine_lr(1.0, 3, 0, 10, 5, 1.5) == pytest.approx(cosine_lr(1.0, 3, 5))
    assert warmup_cosine_lr(1.0, 0, 0, 10, 5, 0.0) == pytest.approx(1.0)  # no warm-up


def test_auto_epochs_sized_in_steps():
    from raydet.train.schedule import MAX_EPOCHS, MIN_EPOCHS, TARGET_STEPS, auto_epochs

    # 158 raccoon photos / batch 16 = 9 steps: ceil(1000 / 9) = 112 epochs (1,008 steps)
    assert auto_epochs(9, target_steps=1000) == 112
    # 3,000 photos / 16 = 187 steps: ceil(1000 / 187) = 6 -> raised to MIN_EPOCHS
    assert auto_epochs(187, target_steps=1000) == MIN_EPOCHS
    assert auto_epochs(1, target_steps=10 * MAX_EPOCHS) == MAX_EPOCHS  # one step an epoch: capped
    assert auto_epochs(9) == min(MAX_EPOCHS, max(MIN_EPOCHS, -(-TARGET_STEPS // 9)))


def test_checkpoint_cadence():
    from raydet.train.schedule import checkpoint_every, is_checkpoint_epoch

    assert checkpoint_every(112, checkpoints=10) == 12  # ceil(11.2)
    assert checkpoint_every(5, checkpoints=10) == 1
    # every 12: epochs 12, 24, ..., 108 and the last (112); not 1 or 13
    due = [e for e in range(1, 113) if is_checkpoint_epoch(e, 112, 12)]
    assert due == [12, 24, 36, 48, 60, 72, 84, 96, 108, 112]
