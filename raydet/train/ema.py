"""Exponential moving average (EMA) of the trained weights, kept inside the optimizer.

At optimizer step ``t`` (1-based) every trainable variable's average moves ``average = d_t * average + (1 - d_t) *
weight`` with ``d_t = decay * (1 - exp(-t / tau))`` (Ultralytics' ModelEMA ramp: early on the average follows the
weights, which are still far from anything worth averaging; late it averages over ~1 / (1 - decay) steps). The
average starts at the initial weights. Validation, ``model.keras`` and so quantization read the averaged weights
(``averaged_weights``); the optimizer's own steps use the raw ones.

Why inside the optimizer: tf_keras' optimizer already keeps one average variable per trainable variable
(``use_ema=True``), updates it in the same step as the weights (after the cross-worker all-reduce, so every Ray
Train worker holds the same average) and saves it with the optimizer state in each checkpoint, so a resumed run
continues the same average. Its decay is a fixed float; the ramp needs the step, so ``EmaAdamW`` overrides the
optimizer's update hook. That hook and the attributes ``averaged_weights`` reads are private to tf_keras 2.x
(``_update_model_variables_moving_average``, ``_model_variables_moving_average``, ``_index_dict``,
``_var_key``): this module is the one place raydet uses them (raydet.detector.model.compile_model also calls
tf_keras' loss container's one-time ``build`` early).
"""

from __future__ import annotations

import math

from raydet.train import heavy

# d_t = DECAY * (1 - exp(-t / TAU)): ~100-step window late in a run; a few hundred photos train ~1,000-3,000 steps.
DECAY = 0.99
TAU = 200.0


def ema_decay(step: int, decay: float = DECAY, tau: float = TAU) -> float:
    """The decay applied at 1-based optimizer ``step``: ``decay * (1 - exp(-step / tau))``."""
    return decay * (1.0 - math.exp(-step / tau))


def make_optimizer(lr: float, weight_decay: float, clip_norm: float, ema: float = 0.0, tau: float = TAU):
    """AdamW with the global gradient norm clipped to ``clip_norm`` (0: not clipped) and, when ``ema`` > 0, an EMA
    of the weights with decay ``ema`` ramped over ``tau`` steps (``ema_decay``).

    tf_keras clips after the cross-worker all-reduce (it aggregates, then clips), so every worker applies the same
    clipped step and the replicas stay identical.
    """
    tf, tf_keras = heavy.tf(), heavy.keras()

    class EmaAdamW(tf_keras.optimizers.AdamW):
        def _update_model_variables_moving_average(self, var_list):  # private tf_keras hook (module docstring)
            t = tf.cast(self.iterations + 1, tf.float32)  # iterations counts the steps before this one
            decay = self.ema_momentum * (1.0 - tf.exp(-t / tau))

            def update(average, var):
                average.assign(decay * average + (1.0 - decay) * var)

            for var in var_list:
                average = self._model_variables_moving_average[self._index_dict[self._var_key(var)]]
                self._distribution_strategy.extended.update(average, update, args=(var,), group=False)

    if ema <= 0:
        return tf_keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay, global_clipnorm=clip_norm or None)
    return EmaAdamW(
        learning_rate=lr, weight_decay=weight_decay, global_clipnorm=clip_norm or None, use_ema=True, ema_momentum=ema
    )


def averaged_weights(model) -> list:
    """``model.get_weights()`` with each trainable variable replaced by its EMA when the model's optimizer keeps
    one (raydet.detector.model.compile_model makes it, from the weights at that moment); otherwise the weights as
    they are. -> list of numpy arrays in ``model.weights``
    order, for ``set_weights`` on a copy of the model."""
    optimizer = getattr(model, "optimizer", None)
    averages = getattr(optimizer, "_model_variables_moving_average", None)
    if not getattr(optimizer, "use_ema", False) or not averages:
        return model.get_weights()
    trainable = {id(v) for v in model.trainable_variables}
    weights = []
    for var in model.weights:
        if id(var) in trainable:
            var = averages[optimizer._index_dict[optimizer._var_key(var)]]
        weights.append(var.numpy())
    return weights
