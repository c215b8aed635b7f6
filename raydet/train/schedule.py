"""The schedule of training: how many epochs (``auto_epochs``), how often to validate and checkpoint
(``checkpoint_every``), and the learning rate: a linear warm-up per step, then a cosine decay per epoch.

Pure functions of (epoch, step) plus the Keras callback that applies them; docs/TRAINING.md says why warm-up and
where the step budget comes from.
"""

from __future__ import annotations

import math

from raydet.train import heavy

# Optimizer steps a run aims for when --epochs is not given: a few hundred photos in batches of 16 make ~10 steps
# an epoch, so epochs are the wrong unit; the epochs are derived from this budget and the train split's size,
# within [MIN_EPOCHS, MAX_EPOCHS] (a large set still sees every photo MIN_EPOCHS times). docs/TRAINING.md.
TARGET_STEPS = 1000
MIN_EPOCHS = 20
MAX_EPOCHS = 300
CHECKPOINTS = 10  # validations and checkpoints in a run when --checkpoint-every is not given


def auto_epochs(steps_per_epoch: int, target_steps: int = TARGET_STEPS) -> int:
    """Epochs that give about ``target_steps`` optimizer steps: ``ceil(target / steps_per_epoch)`` within
    [MIN_EPOCHS, MAX_EPOCHS]. ``steps_per_epoch`` >= 1."""
    return min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(target_steps / steps_per_epoch)))


def checkpoint_every(epochs: int, checkpoints: int = CHECKPOINTS) -> int:
    """Epochs between validations and checkpoints so a run of ``epochs`` has about ``checkpoints`` of them."""
    return max(1, math.ceil(epochs / checkpoints))


def is_checkpoint_epoch(epoch: int, epochs: int, every: int) -> bool:
    """Whether 1-based ``epoch`` validates and checkpoints: every ``every``-th epoch and always the last."""
    return epoch % every == 0 or epoch == epochs


def cosine_lr(lr: float, epoch: int, epochs: int, floor: float = 0.05) -> float:
    """Learning rate of 0-based ``epoch``: cosine from ``lr`` (epoch 0) down to ``floor * lr`` (last epoch)."""
    t = epoch / max(epochs - 1, 1)
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0))))


def warmup_cosine_lr(
    lr: float, epoch: int, step: int, steps_per_epoch: int, epochs: int, warmup_epochs: float
) -> float:
    """Learning rate of 0-based ``step`` in 0-based ``epoch``: the epoch's cosine rate (:func:`cosine_lr`), scaled
    by a linear warm-up over the first ``warmup_epochs`` epochs: (steps done + 1) / warm-up steps, up to 1."""
    base = cosine_lr(lr, epoch, epochs)
    warmup_steps = warmup_epochs * steps_per_epoch
    done = epoch * steps_per_epoch + step
    return base if done + 1 >= warmup_steps else base * (done + 1) / warmup_steps


def WarmupCosine(lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: float):  # a Keras class, built lazily
    """Keras callback setting :func:`warmup_cosine_lr` before each step (while warming up) and at each epoch's
    start."""
    tf_keras = heavy.keras()

    class WarmupCosine(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            self._set(0)

        def on_train_batch_begin(self, batch, logs=None):
            if self.epoch < warmup_epochs:  # only epochs that hold warm-up steps pay a per-step call
                self._set(batch)

        def _set(self, step: int) -> None:
            tf_keras.backend.set_value(
                self.model.optimizer.learning_rate,
                warmup_cosine_lr(lr, self.epoch, step, steps_per_epoch, epochs, warmup_epochs),
            )

    return WarmupCosine()
