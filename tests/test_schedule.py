"""The learning-rate schedule by hand: cosine per epoch, linear warm-up per step."""

import pytest

from raydet.schedule import cosine_lr, step_lr


def test_cosine_schedule_by_hand():
    # 5 epochs: t = e / 4; lr * (0.05 + 0.95 * (1 + cos(pi t)) / 2)
    assert cosine_lr(1.0, 0, 5) == pytest.approx(1.0)
    assert cosine_lr(1.0, 2, 5) == pytest.approx(0.05 + 0.95 * 0.5)  # cos(pi/2) = 0 -> 0.525
    assert cosine_lr(1.0, 4, 5) == pytest.approx(0.05)


def test_warmup_by_hand():
    # 10 steps per epoch, warm-up 1.5 epochs = 15 steps: step k (0-based, counted over epochs) runs at (k + 1) / 15
    # of the epoch's cosine rate; from step 14 on, the plain cosine rate.
    assert step_lr(1.0, 0, 0, 10, 5, 1.5) == pytest.approx(1 / 15)
    assert step_lr(1.0, 0, 9, 10, 5, 1.5) == pytest.approx(10 / 15)
    assert step_lr(1.0, 1, 2, 10, 5, 1.5) == pytest.approx(cosine_lr(1.0, 1, 5) * 13 / 15)
    assert step_lr(1.0, 1, 4, 10, 5, 1.5) == pytest.approx(cosine_lr(1.0, 1, 5))
    assert step_lr(1.0, 3, 0, 10, 5, 1.5) == pytest.approx(cosine_lr(1.0, 3, 5))
    assert step_lr(1.0, 0, 0, 10, 5, 0.0) == pytest.approx(1.0)  # no warm-up
