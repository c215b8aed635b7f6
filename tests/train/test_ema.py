"""The EMA of the weights (raydet.train.ema): its ramped decay by hand, and the averaged weights a run exports equal
that formula applied to the weights after each optimizer step."""

import math

import numpy as np
import pytest

from raydet.train.ema import averaged_weights, ema_decay, make_optimizer


def test_decay_ramps_up_to_its_value():
    # d_t = 0.99 * (1 - exp(-t / 200)): t = 1 -> 0.99 * 0.0049875 = 0.0049377; t = 200 -> 0.99 * (1 - e^-1) = 0.62580
    assert ema_decay(1, 0.99, 200) == pytest.approx(0.99 * (1 - math.exp(-1 / 200)))
    assert ema_decay(200, 0.99, 200) == pytest.approx(0.62580, abs=1e-5)
    assert ema_decay(10_000, 0.99, 200) == pytest.approx(0.99)


def test_averaged_weights_follow_the_formula_after_k_steps():
    from raydet.cluster.runtime import use_legacy_keras

    use_legacy_keras()
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(2), tf_keras.layers.BatchNormalization()])
    model.compile(make_optimizer(0.05, 0.0, 0.0, ema=0.9, tau=2.0), loss="mse")
    start = model.get_weights()
    trainable = [any(w is v for v in model.trainable_variables) for w in model.weights]
    after = []
    record = tf_keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: after.append(model.get_weights()))
    x = np.random.default_rng(0).normal(size=(20, 3)).astype("float32")
    model.fit(x, x[:, :2] * 3.0, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[record])
    assert len(after) == 5
    # average_0 = the initial weights; average_t = d_t * average_{t-1} + (1 - d_t) * w_t
    expected = [w.copy() for w in start]
    for t, weights in enumerate(after, start=1):
        d = 0.9 * (1 - math.exp(-t / 2.0))
        expected = [d * e + (1 - d) * w for e, w in zip(expected, weights, strict=True)]
    got = averaged_weights(model)
    for i, (g, e, w, is_trainable) in enumerate(zip(got, expected, after[-1], trainable, strict=True)):
        if is_trainable:  # the kernel, bias, gamma, beta: their averages
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6, err_msg=f"weight {i}")
            assert not np.allclose(g, w)  # and not the raw weights
        else:  # BN's moving statistics are no optimizer variables: as they are
            np.testing.assert_array_equal(g, w)


def test_no_average_means_the_weights():
    from raydet.cluster.runtime import use_legacy_keras

    use_legacy_keras()
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(2)])
    model.compile(make_optimizer(0.05, 0.0, 0.0, ema=0.0), loss="mse")
    model.fit(np.ones((4, 3), "float32"), np.zeros((4, 2), "float32"), verbose=0)
    for g, w in zip(averaged_weights(model), model.get_weights(), strict=True):
        np.testing.assert_array_equal(g, w)
