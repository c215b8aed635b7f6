"""One Ray Train worker of ``raydet train`` (raydet.train.driver is the driver): build or restore the detector under
MultiWorkerMirroredStrategy, fit it on batches of its train shard (held in memory or streamed from Ray Data, as
the driver planned: raydet.train.inputs), and after each epoch report, validate and checkpoint. Each worker computes the
validation loss on its own range of the test split; rank 0 also reads the first ``VAL_AP_IMAGES`` test rows for
the validation AP (raydet.train.validation).

Checkpoint layout (every ``checkpoint_every`` epochs and the last; rank 0's folder is the one kept, uploaded by
Ray Train's upload thread while the next epoch trains): ``weights/ckpt*`` (TF-format weights with the optimizer
state), the clean float32 model (``model.keras``; ``model_qat.keras`` for a QAT run) and ``state.json``
(``{"history": [...], "nonfinite": null | {"epoch", "loss"}}``; a non-finite stop's checkpoint holds only that).
The training model runs under ``precision`` (a Keras mixed-precision policy); the export copy is float32. Rank 0
also writes each epoch's history row as TensorBoard scalars (``RUN/tensorboard/``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import ray.train

from raydet.cluster import storage
from raydet.config import AugmentConfig, ModelConfig
from raydet.detector.model import OUTPUT_STRIDE, build_model, compile_model, freeze_backbone_bn, init_backbone
from raydet.export.qat import apply_qat, calibrate_ranges
from raydet.export.run import Run
from raydet.ingest.shards import read_rows
from raydet.train import heavy, inputs
from raydet.train.ema import averaged_weights, make_optimizer
from raydet.train.inputs import CloseMosaic
from raydet.train.schedule import WarmupCosine, is_checkpoint_epoch
from raydet.train.validation import ValidationAP

CHECKPOINT_STATE_FILE = "state.json"
WEIGHTS_PREFIX = "weights/ckpt"


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: build (or restore) the model under MultiWorkerMirroredStrategy (TF's default strategy
    when it is the only worker) and fit.

    ``config``: ``model`` (ModelConfig fields), ``train`` (TrainConfig fields), ``prep`` (absolute path or URI),
    ``inputs`` (raydet.train.inputs.InputPlan fields), ``steps_per_epoch``, ``local_batch``, ``n_test``, ``callbacks``
    (factories ``f(rank, world, steps_per_epoch)`` of extra Keras callbacks, raydet.train.driver.train),
    ``tensorboard_dir`` (absolute; rank 0 writes each epoch's scalars there), ``calibration`` (QAT's images).
    """
    tf = heavy.tf()
    tf.get_logger().setLevel("ERROR")  # MWMS logs every collective at INFO: thousands of lines
    _quiet_worker_logs()
    tcfg = config["train"]
    # One intra-op thread per reserved CPU: two workers on two cores must not each spin two threads.
    tf.config.threading.set_intra_op_parallelism_threads(max(1, round(tcfg["cpus_per_worker"])))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # One worker has nothing to all-reduce with: it trains under TF's default strategy, without
    # MultiWorkerMirroredStrategy's collectives (docs/TRAINING.md, "Layout of the workers", has their cost).
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if world > 1 else tf.distribute.get_strategy()
    tf.keras.utils.set_random_seed(tcfg["seed"] + rank)  # different shuffles per worker, same init below

    mcfg = ModelConfig(**config["model"])
    train_local, maker, val_local, val_steps = _inputs(config, mcfg, rank, world)
    train_ds = strategy.distribute_datasets_from_function(lambda _: train_local)
    val_ds = strategy.distribute_datasets_from_function(lambda _: val_local)

    checkpoint = ray.train.get_checkpoint()
    # The export copy is built here, outside the strategy's scope: variables made inside it (fit runs
    # callbacks inside it) are mirrored, and creating them on one worker alone waits forever for the rest.
    # It holds each epoch's weights for the saved model and for rank 0's validation AP.
    export = build_model(mcfg)
    if tcfg["qat"]:
        export = apply_qat(export)
    with strategy.scope(), _policy(tcfg["precision"]):
        model, history, stopped = _build(mcfg, tcfg, checkpoint, say=_say if rank == 0 else lambda text: None)
    initial_epoch = len(history)
    if stopped:
        return  # the driver reports it (raydet.train.driver._finish): training on would start from no weights
    if tcfg["qat"] and not history and config.get("calibration") is not None:
        _calibrate_qat(model, export, config["calibration"], _say if rank == 0 else lambda text: None)
    if initial_epoch >= tcfg["epochs"]:
        if rank == 0:
            print(f"run already has {initial_epoch} epochs (asked for {tcfg['epochs']}): nothing to train", flush=True)
        return

    validation = ValidationAP.from_prep(config["prep"], mcfg.num_classes) if rank == 0 else None
    reporter = _EpochReporter(model, export, tcfg, history, rank, validation, _tensorboard_writer(config, rank))
    callbacks = [
        WarmupCosine(tcfg["lr"], tcfg["epochs"], config["steps_per_epoch"], tcfg["warmup_epochs"]),
        CloseMosaic(maker, tcfg["epochs"], tcfg["close_mosaic"]),
        reporter,
    ]
    callbacks += [factory(rank, world, config["steps_per_epoch"]) for factory in config["callbacks"]]
    due = [e for e in range(1, tcfg["epochs"] + 1) if is_checkpoint_epoch(e, tcfg["epochs"], tcfg["checkpoint_every"])]
    model.fit(
        train_ds,
        epochs=tcfg["epochs"],
        initial_epoch=initial_epoch,
        steps_per_epoch=config["steps_per_epoch"],
        validation_data=val_ds,
        validation_steps=val_steps,
        validation_freq=due,
        callbacks=callbacks,
        verbose=0,
    )


@contextlib.contextmanager
def _policy(name: str | None):
    """Layers built inside compute under the Keras mixed-precision policy ``name`` (None: float32); the global
    policy is float32 again afterwards, so the export copy and everything else stay float32."""
    tf_keras = heavy.keras()
    tf_keras.mixed_precision.set_global_policy(name or "float32")
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")


def _inputs(config: dict, mcfg: ModelConfig, rank: int, world: int):
    """This worker's (train dataset, its BatchMaker, validation dataset, validation steps), streamed or in memory
    as ``config["inputs"]`` (raydet.train.inputs.InputPlan fields) says. Streamed, the train shard comes from Ray
    Data (``get_dataset_shard("train")``); in memory, the worker reads its ``rows_per_worker`` consecutive train
    rows straight from ``config["prep"]``, as it reads its validation range (``val_range``) either way."""

    tcfg, plan, batch = config["train"], config["inputs"], config["local_batch"]
    augment = AugmentConfig(**tcfg["augmentation"]) if tcfg["augment"] else None
    grid, size, classes = mcfg.image_size // OUTPUT_STRIDE, mcfg.image_size, mcfg.num_classes
    seed, rows = tcfg["seed"] + rank, plan["rows_per_worker"]
    start, stop = inputs.val_range(config["n_test"], rank, world)
    pad_to = plan["val_rows_per_worker"]
    if plan["stream"]:
        val_ds, val_steps = inputs.stream_val_dataset(
            config["prep"], "test", start, stop, classes, grid, size, batch, pad_to
        )
        shard = ray.train.get_dataset_shard("train")
        train_ds, maker = inputs.stream_train_dataset(shard, classes, grid, size, batch, augment, seed, rows)
        return train_ds, maker, val_ds, val_steps

    arrays = inputs.load_rows(config["prep"], "train", rank * rows, (rank + 1) * rows)
    val_parts = [inputs.arrays_of(b) for b in read_rows(config["prep"], "test", start, stop)]
    val_ds, val_steps = inputs.val_dataset(val_parts, classes, grid, size, batch, pad_to)
    train_ds, maker = inputs.train_dataset(arrays, classes, grid, batch, augment, seed)
    return train_ds, maker, val_ds, val_steps


def _tensorboard_writer(config: dict, rank: int):
    """Rank 0's ``tf.summary`` file writer into ``config["tensorboard_dir"]`` (one set of event files per run);
    None on the other ranks or without the key. Made outside the strategy's scope, like the export copy."""
    if rank != 0 or not config.get("tensorboard_dir"):
        return None
    return heavy.tf().summary.create_file_writer(config["tensorboard_dir"])


def _calibrate_qat(model, export, images, say) -> None:
    """Start a fresh QAT model's activation ranges at what its layers output on ``images`` (the same rows on
    every worker, from the driver), measured on the plain ``export`` copy and copied into the distributed
    ``model`` (raydet.export.qat.calibrate_ranges says why)."""

    export.set_weights(model.get_weights())
    count = calibrate_ranges(export, images)
    model.set_weights(export.get_weights())
    say(f"qat: {count} activation ranges calibrated on {len(images)} training images")


def _say(text: str) -> None:
    print(text, flush=True)


def _quiet_worker_logs() -> None:
    """Keep the worker's output to raydet's one line per epoch. TF's checkpoint saver logs every save through absl
    at INFO ("Sharding callback duration"), and Ray Train 2.60 logs every report, with all its metrics and from every
    worker, through a logger named after its source file, which ``LoggingConfig`` does not reach."""

    logging.getLogger("absl").setLevel(logging.WARNING)
    train_context = heavy.train_context()  # private Ray Train API (raydet.train.heavy); None: another Ray version
    if train_context is not None:
        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def _build(mcfg: ModelConfig, tcfg: dict, checkpoint, say):
    """Model + optimizer, restored from ``checkpoint`` or started from ``--init-from`` or the backbone's
    pretrained weights; ``say(text)`` logs what was done. Returns (model, history, stopped: the checkpoint is the
    weightless one of a run whose loss became non-finite)."""

    model = build_model(mcfg)
    history: list[dict] = []
    stopped = False
    if tcfg["init_from"] and checkpoint is None:
        say(transfer_weights(_load_init_from(tcfg["init_from"]), model))
    elif checkpoint is None:
        say(init_backbone(model, mcfg))
    if tcfg["freeze_bn"] and freeze_backbone_bn(model, mcfg):
        say("backbone BatchNorm frozen (ImageNet statistics kept)")
    if tcfg["qat"]:
        model = apply_qat(model)
    # QAT fine-tunes briefly from a run's averaged float weights (its --init-from): it keeps no average of its own
    optimizer = make_optimizer(
        tcfg["lr"], tcfg["weight_decay"], tcfg["clip_norm"], ema=0.0 if tcfg["qat"] else tcfg["ema_decay"]
    )
    compile_model(
        model,
        optimizer,
        heatmap_weight=tcfg["heatmap_loss_weight"],
        offset_weight=tcfg["offset_loss_weight"],
        size_weight=tcfg["size_loss_weight"],
        giou_weight=tcfg["giou_loss_weight"],
    )
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt:
            state = json.loads((Path(ckpt) / CHECKPOINT_STATE_FILE).read_text())
            history = state["history"]
            stopped = bool(state.get("nonfinite"))
            if history and not stopped:  # a non-finite stop's checkpoint holds no weights
                # the optimizer's state is built (compile_model), so it restores now, not lazily
                model.load_weights(str(Path(ckpt) / WEIGHTS_PREFIX)).assert_existing_objects_matched()
    return model, history, stopped


def _load_init_from(run: str):
    """``--init-from`` RUN's float model (RUN a path or URI, fetched into a temporary folder), uncompiled."""
    tf_keras = heavy.keras()
    with tempfile.TemporaryDirectory(prefix="raydet-init-") as tmp:
        return tf_keras.models.load_model(storage.local_file(Run(run).file(Run.FLOAT_MODEL), Path(tmp)), compile=False)


def transfer_weights(source, target) -> str:
    """Copy every layer's weights from ``source`` to the same-named layer of ``target`` where shapes match
    (a pretrained run with other classes or another input size keeps its conv blocks); -> what moved."""
    moved, skipped = [], []
    for layer in target.layers:
        try:
            src = source.get_layer(layer.name)
        except ValueError:
            continue
        weights = src.get_weights()
        if weights and [w.shape for w in weights] == [w.shape for w in layer.get_weights()]:
            layer.set_weights(weights)
            moved.append(layer.name)
        elif weights:
            skipped.append(layer.name)
    return f"init-from: copied {len(moved)} layers, kept fresh {skipped or 'none'} (shapes differ)"


def _metrics_row(epoch: int, epochs: int, logs: dict, lr: float, seconds: float) -> dict:
    """Keras's multi-output log names -> the history names of docs/FORMATS.md."""
    names = {"loss": "loss", "heatmap_loss": "heatmap_loss", "boxes_loss": "box_loss"}
    row = {"epoch": epoch, "epochs": epochs}
    for keras_name, name in names.items():
        for prefix in ("", "val_"):
            if prefix + keras_name in logs:
                row[prefix + name] = float(logs[prefix + keras_name])
    # seconds: train + validation of this epoch; end_time (unix): lets benchmarks time whole epochs.
    row.update(lr=lr, seconds=round(seconds, 3), end_time=time.time())
    return row


def format_row(row: dict) -> str:
    """The one readable line per epoch (the validation figures on the epochs that validate)."""
    nan = float("nan")
    val = (
        (
            f"  val_loss {row['val_loss']:.4f}  val_AP50 {row.get('val_ap50', nan):.3f}  "
            f"val_mAP {row.get('val_map', nan):.3f}"
        )
        if "val_loss" in row
        else ""
    )
    return (
        f"epoch {row['epoch']}/{row['epochs']}  loss {row['loss']:.4f} (heatmap {row.get('heatmap_loss', nan):.3f} "
        f"box {row.get('box_loss', nan):.3f}){val}  lr {row['lr']:.2e}  {row['seconds']:.1f}s"
    )


SCALARS = (
    "loss",
    "heatmap_loss",
    "box_loss",
    "val_loss",
    "val_heatmap_loss",
    "val_box_loss",
    "val_ap50",
    "val_map",
    "lr",
    "seconds",
)  # history names written to TensorBoard (docs/FORMATS.md)


def write_scalars(writer, row: dict) -> None:
    """One history row as TensorBoard scalars at step ``row["epoch"]``: python floats through a
    ``tf.summary`` file writer (no tensors of the model, no collective, so nothing waits for other workers)."""
    tf = heavy.tf()
    with writer.as_default():
        for key in SCALARS:
            if isinstance(row.get(key), (int, float)) and math.isfinite(row[key]):
                tf.summary.scalar(key, float(row[key]), step=int(row["epoch"]))
    writer.flush()  # each epoch visible to a running TensorBoard (and kept if the worker dies)


def _make_reporter_class():
    tf_keras = heavy.keras()

    class EpochReporter(tf_keras.callbacks.Callback):
        """After each epoch: check the loss, copy the weights into the plain (non-distributed) ``export`` model
        (every worker: synced variables are read collectively), let rank 0 measure ``validation`` on it, save a
        checkpoint (rank 0's folder is the one reported), report the metrics."""

        def __init__(self, model, export, tcfg: dict, history: list[dict], rank: int, validation=None, board=None):
            super().__init__()
            self.net, self.export, self.tcfg, self.history, self.rank = model, export, tcfg, history, rank
            self.validation, self.board = validation, board
            self.t0 = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.t0
            lr = float(tf_keras.backend.get_value(self.net.optimizer.learning_rate))
            row = _metrics_row(epoch + 1, self.tcfg["epochs"], logs or {}, lr, seconds)
            if not all(math.isfinite(row.get(k, 0.0)) for k in ("loss", "val_loss")):
                self._report_nonfinite(row)
                return
            due = is_checkpoint_epoch(epoch + 1, self.tcfg["epochs"], self.tcfg["checkpoint_every"])
            if due:  # the averaged weights into the export copy: validation AP and model.keras
                self.export.set_weights(averaged_weights(self.net))  # the EMA, when the optimizer keeps one
                if self.validation is not None:
                    row.update(self.validation(self.export))
            self.history.append(row)
            if self.rank == 0:
                print(format_row(row), flush=True)
            if self.board is not None:
                write_scalars(self.board, row)
            if not due:  # epochs between checkpoints live in self.history until the next one saves them
                return
            folder = tempfile.mkdtemp(prefix=f"raydet-ckpt-r{self.rank}-")
            self._save(folder)
            # Uploaded by Ray Train's upload thread while the next epoch trains, then deleted by it; the checkpoint
            # counts (resume, the run's result) only once its upload is complete. Rank 0's folder is the one kept.
            ray.train.report(
                row,
                checkpoint=ray.train.Checkpoint.from_directory(folder) if self.rank == 0 else None,
                checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
            )
            if self.rank != 0:  # the other ranks' saves were for the collectives only
                shutil.rmtree(folder, ignore_errors=True)

        def on_train_end(self, logs=None):
            if self.board is not None:
                self.board.close()

        def _save(self, folder: str) -> None:
            self.net.save_weights(str(Path(folder) / WEIGHTS_PREFIX))
            if self.tcfg["qat"]:
                self.net.save(str(Path(folder) / Run.QAT_MODEL), save_format="keras_v3")
            else:
                # the export copy has no compile state, so model.keras loads without custom objects
                if self.rank == 0:
                    # save_format named: tf_keras keeps "use the .keras format" in a thread-local that its
                    # own save/load reset to False, so a second save in Ray's training thread wrote HDF5.
                    self.export.save(str(Path(folder) / Run.FLOAT_MODEL), save_format="keras_v3")
            Path(folder, CHECKPOINT_STATE_FILE).write_text(json.dumps({"history": self.history, "nonfinite": None}))

        def _report_nonfinite(self, row: dict) -> None:
            """Stop everywhere; report the good epochs' history with a marker the driver turns into an error (no
            weights: the last good ones are in the checkpoint before it)."""
            self.net.stop_training = True
            if self.rank != 0:
                ray.train.report(row, checkpoint=None)
                return
            folder = tempfile.mkdtemp(prefix="raydet-ckpt-r0-")  # deleted by Ray Train once uploaded
            Path(folder, CHECKPOINT_STATE_FILE).write_text(
                json.dumps({"history": self.history, "nonfinite": {"epoch": row["epoch"], "loss": row["loss"]}})
            )
            print(f"loss became non-finite ({row['loss']}) at epoch {row['epoch']}: stopping", flush=True)
            ray.train.report(
                row, checkpoint=ray.train.Checkpoint.from_directory(folder), delete_local_checkpoint_after_upload=True
            )

    return EpochReporter


def _EpochReporter(*args, **kwargs):  # a class built lazily so this module imports without TF
    return _make_reporter_class()(*args, **kwargs)
