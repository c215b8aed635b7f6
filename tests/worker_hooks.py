"""Code that tests hand to raydet to run inside Ray workers: Keras callbacks for ``raydet.train.driver.train(cfg,
callbacks=...)`` and a Predictor subclass for ``raydet.evaluate.pool.evaluate(cfg, predictor=...)``. This module
travels by value (``register``), so a test can end a worker's process or read its weights without any test hook
in raydet itself."""

import hashlib
import json
import os
from pathlib import Path


def register() -> None:
    """Ship this module's functions to Ray workers by value (the workers cannot import tests/)."""
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def weights_sha256(variables) -> str:
    """sha256 over the bytes of each variable's value (a variable or a numpy array), in order: equal on workers
    that hold equal weights."""
    digest = hashlib.sha256()
    for v in variables:
        digest.update((v.numpy() if hasattr(v, "numpy") else v).tobytes())
    return digest.hexdigest()


def fail_once(marker: str):
    """A factory: the last worker ends its process (``os._exit(1)``, no clean-up) halfway through epoch 2, once;
    the marker file records that it happened."""

    def factory(rank: int, world: int, steps: int):
        import tf_keras

        class FailOnce(tf_keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch

            def on_train_batch_end(self, batch, logs=None):
                if self.epoch == 1 and batch == steps // 2 and rank == world - 1 and not os.path.exists(marker):
                    Path(marker).write_text(f"killed rank {rank} at epoch 2 step {batch + 1}\n")
                    os._exit(1)

        return FailOnce()

    return factory


def write_checksums(folder: str):
    """A factory: after each epoch each worker writes ``rank<r>.json`` with the sha256 of its weights and of the
    averaged weights it would export (raydet.train.ema.averaged_weights). After each epoch, not at the end of training:
    Keras' fit ends by copying the optimizer's averages into the weights (``finalize_variable_values``)."""

    def factory(rank: int, world: int, steps: int):
        import tf_keras

        class Checksum(tf_keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                from raydet.train.ema import averaged_weights

                Path(folder, f"rank{rank}.json").write_text(
                    json.dumps(
                        {
                            "rank": rank,
                            "sha256": weights_sha256(self.model.trainable_weights),
                            "ema_sha256": weights_sha256(averaged_weights(self.model)),
                            "raw_sha256": weights_sha256(self.model.get_weights()),
                        }
                    )
                )

        return Checksum()

    return factory


def crash_once_predictor(marker: str):
    """A raydet.evaluate.pool.Predictor subclass whose first call (in whichever actor creates ``marker`` first) writes
    its pid to ``marker`` and ends the process as a crash does: no exception, no clean-up, no result."""
    from raydet.evaluate.pool import Predictor

    class CrashOnce(Predictor):
        def __call__(self, batch):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: only one caller wins
            except FileExistsError:
                return super().__call__(batch)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os._exit(1)

    return CrashOnce
