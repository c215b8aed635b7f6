"""``raydet tune``: Ray Tune over raydet's training, one Tune trial per configuration, ASHA on val AP50.

The trainable is a *function* (``run_trial``) that builds and fits raydet's TensorflowTrainer for its trial through
``raydet.train.driver.train``, with Ray Train's ``TuneReportCallback`` in the trainer's RunConfig: every validated
epoch's metrics (``epoch``, ``val_ap50``, ...: rank 0's history row, reported with its checkpoint) reach Tune, and ASHA
(``time_attr="epoch"``) stops the trials below the best 1/rf at each rung. Each trial validates every
``report_every`` epochs, about twice per ASHA grace period, so every rung has a value soon after it.

Folders: ``RUNS/NAME/trial-k`` is trial k's ordinary RUN (config.json, checkpoints, history.jsonl, model.keras,
train.log: its driver's lines); ``RUNS/NAME/tune`` is Tune's experiment state; ``RUNS/NAME/search.json`` what the
search runs with; ``trials.md`` / ``trials.json`` its table (raydet.tune.table). A trial that ASHA stopped is ended
from outside, so its model and history are written afterwards from its last reported checkpoint.

Rerunning the same command continues an interrupted search (``Tuner.restore``): finished trials stay, unfinished
ones resume from their own newest checkpoint (Ray Train's resume in the same RUN), failed ones stay failed.
The trial actor reserves no CPU: the trainer's workers reserve them, and ``max_concurrent_trials`` lets only as
many trials run as the cluster holds trainers.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, replace

import ray
from ray import tune as ray_tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

from raydet.cluster import storage
from raydet.cluster.runtime import init_ray
from raydet.config import TrainConfig, TuneConfig
from raydet.errors import UserError
from raydet.export.run import Run
from raydet.ingest.prep import Prep
from raydet.train import heavy
from raydet.train.driver import finish_from_checkpoint, fit_to_cluster, steps_per_epoch, train
from raydet.train.schedule import auto_epochs
from raydet.tune import table
from raydet.tune.space import build_space, longest_epochs, sample_trials, trial_name, trial_train_config

TUNE_DIR = "tune"  # RUNS/NAME/tune: Tune's experiment folder
SEARCH_FILE = "search.json"
METRIC = "val_ap50"
TRAIN_LOG = "train.log"  # RUN/train.log: what the trial's driver printed
PG_FILE = ".placement_group"  # RUN/.placement_group: the hex id of the trial's Train workers' placement group
# What a trial's own actor (the Train driver) reserves: no CPU, which its trainer's workers need (a 1-CPU trial on
# a 2-CPU machine leaves too few for two 1-CPU workers, and the trainer waits forever), and some memory, because
# Tune refuses a trial that asks for nothing at all.
TRIAL_RESOURCES = {"cpu": 0, "memory": 256 * 2**20}


@dataclass(frozen=True)
class TuneSummary:
    search_dir: str  # RUNS/NAME
    trials: tuple[dict, ...]  # raydet.tune.table records, in trial order
    best_run: str | None  # the best trial's RUN folder (None when no trial has a model)


# ------------------------------------------------------------------------------------------------ trial
def run_trial(config: dict, base: TrainConfig, points: list, report_every: int) -> None:
    """One Tune trial: train ``points[config["trial"] - 1]`` as RUN ``base.out/base.name/trial-k`` (a resumed trial
    continues from that RUN's newest checkpoint). Its driver's lines go to RUN/train.log."""

    k = config["trial"]
    cfg = trial_train_config(base, points[k - 1], k, report_every)
    run = storage.join(cfg.out, cfg.name)
    with _lines_into(storage.join(run, TRAIN_LOG)):
        train(cfg, callbacks=(PlacementGroupNote(storage.join(run, PG_FILE)),), run_callbacks=(_report_callback(),))


class PlacementGroupNote:
    """A worker callback factory (raydet.train.driver.train's ``callbacks``): rank 0 writes the id of the placement
    group its Train workers run in to ``path`` (RUN/.placement_group) and returns a callback that does nothing.

    Why: Ray Train V2 reserves its workers' CPUs in a placement group that lives as long as the *job*, and relies
    on a detached PlacementGroupCleaner to remove it when the trainer's controller dies. A trial that ASHA stops is
    killed with its controller, and that cleaner asks the State API, which fails without a dashboard or with two Ray
    instances on the machine ("Found multiple active Ray instances"): the CPUs stayed reserved and the next trial
    waited forever. The driver removes the placement group of every ended trial itself (``release``)."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, rank: int, world: int, steps_per_epoch: int):
        tf_keras = heavy.keras()
        group = ray.util.get_current_placement_group()
        if rank == 0 and group is not None:
            storage.write_text(self.path, group.id.hex())
        return tf_keras.callbacks.Callback()


def release(run: str) -> bool:
    """Remove the placement group RUN/.placement_group names unless Ray already removed it; -> whether it did.
    Call only for a trial that has ended (its workers, if any are left, are killed)."""

    path = storage.join(run, PG_FILE)
    if storage.kind(path) != "file":
        return False
    group = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(storage.read_text(path).strip())))
    if placement_group_table(group).get("state") in (None, "REMOVED"):
        return False
    remove_placement_group(group)
    return True


@contextlib.contextmanager
def _lines_into(path: str):
    """Within the block, this process's ``print``s append to ``path``: a local file as they come (a trial that ASHA
    kills keeps its lines), a URI at the end."""
    if not storage.is_uri(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8", buffering=1) as f, contextlib.redirect_stdout(f):
            yield
        return
    with tempfile.TemporaryDirectory(prefix="raydet-trial-") as tmp:
        local = os.path.join(tmp, TRAIN_LOG)
        try:
            with open(local, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f):
                yield
        finally:
            old = storage.read_text(path) if storage.kind(path) == "file" else ""
            with open(local, encoding="utf-8") as f:
                storage.write_text(path, old + f.read())


def _report_callback():
    """Ray Train's ``TuneReportCallback``, forwarding only reports that carry ``val_ap50`` (a non-finite loss is
    re-reported without it, and Tune refuses a result that lacks its metric)."""

    class ValidatedReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and METRIC in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return ValidatedReport()


def trial_run(base: TrainConfig, k: int) -> str:
    """Trial ``k``'s RUN folder: RUNS/NAME/trial-k (``base.out`` is RUNS, ``base.name`` NAME)."""
    return storage.join(base.out, base.name, trial_name(k))


def trial_dirname(trial) -> str:
    """Tune's folder of a trial under RUNS/NAME/tune: ``trial-k`` (its RUN is RUNS/NAME/trial-k)."""
    return trial_name(trial.config["trial"])


# ------------------------------------------------------------------------------------------------ driver
def tune(cfg: TuneConfig) -> TuneSummary:
    """Run (or continue) the search ``cfg`` into RUNS/NAME; print raydet's per-trial lines, then the table.

    Raises UserError for a bad PREP, a cluster too small for one trial, a configuration that cannot train (a
    batch smaller than the workers or larger than the train split), or a RUNS/NAME that holds another search;
    KeyboardInterrupt when the search was interrupted (Ctrl-C) with trials unfinished: run it again to continue.
    """

    base = replace(cfg.train, prep=storage.normalize(cfg.train.prep), out=storage.normalize(cfg.train.out))
    manifest = Prep(base.prep).read_manifest()
    init_ray(base.address, log_to_driver=False)  # the trials' epoch lines would interleave: raydet prints its own
    base = fit_to_cluster(base)
    asked, cfg = cfg.max_epochs, resolve_max_epochs(cfg, base, manifest["splits"]["train"])
    if asked is None and not longest_epochs(cfg.space):
        print(f"max epochs: {cfg.max_epochs}, as long as a default training on this PREP", flush=True)
    points = sample_trials(build_space(base, cfg.space, cfg.max_epochs), base, cfg.max_epochs, cfg.trials, cfg.seed)
    _check_points(points, base, manifest["splits"]["train"])
    search_dir = storage.join(base.out, base.name)
    search = _search_key(cfg, base, points)
    _claim(search_dir, search)
    tuner = _tuner(cfg, base, points, search_dir)
    with contextlib.redirect_stdout(sys.stderr):  # Tune's start-up box and hints: the log, not the console
        grid = tuner.fit()
    for k in range(1, len(points) + 1):
        release(trial_run(base, k))
    unfinished = _unfinished(storage.join(search_dir, TUNE_DIR))
    if unfinished:
        print(
            f"search interrupted with {', '.join(map(trial_name, unfinished))} unfinished; run the same command "
            f"again to continue it",
            flush=True,
        )
        raise KeyboardInterrupt
    records = [_record(result, base, points) for result in grid]
    records.sort(key=lambda r: r["trial"])
    print("\n" + table.format_table(records) + "\n" + "\n".join(table.summary_lines(records, search_dir)), flush=True)
    table.write_tables(search_dir, records, search)
    best = table.best_trial(records)
    return TuneSummary(search_dir, tuple(records), best["run"] if best else None)


def resolve_max_epochs(cfg: TuneConfig, base: TrainConfig, n_train: int) -> TuneConfig:
    """``cfg`` with ``max_epochs`` set: as given, else the longest ``epochs`` its ``--space`` names, else the epochs
    a default ``raydet train`` of ``base`` (workers resolved) runs on ``n_train`` train images (its auto schedule),
    so that trial 1, the space's centre, is that run. UserError (TuneConfig's own check, which ``replace`` runs)
    if ``--grace-epochs`` is then above it."""
    if cfg.max_epochs is not None:
        return cfg
    epochs = longest_epochs(cfg.space) or auto_epochs(max(steps_per_epoch(base, n_train), 1))
    return replace(cfg, max_epochs=epochs)


def _unfinished(experiment: str) -> list[int]:
    """Trials (k) that the experiment's saved state holds as neither ended nor failed: a search interrupted by
    Ctrl-C. Tune saves that state before it stops the running trials, which the returned ResultGrid then counts
    as terminated like those that ASHA stopped."""
    analysis = ray_tune.ExperimentAnalysis(experiment)
    return sorted(t.config["trial"] for t in analysis.trials if t.status not in ("TERMINATED", "ERROR"))


def _check_points(points: list[dict], base: TrainConfig, n_train: int) -> None:
    """UserError naming a batch size that cannot train on ``base.workers`` workers and ``n_train`` images."""
    for point in points:
        batch = point.get("batch", base.batch_size)
        if batch < base.workers:
            raise UserError(f"--space batch {batch} is smaller than the {base.workers} workers")
        if (n_train // base.workers) // (batch // base.workers) < 1:
            raise UserError(f"--space batch {batch} is more than the {n_train} training images make in one step")


def _search_key(cfg: TuneConfig, base: TrainConfig, points: list[dict]) -> dict:
    """What makes a search itself (search.json): a rerun with the same key continues it."""
    train = {k: v for k, v in asdict(base).items() if k not in ("address", "resource_timeout_s")}
    return json.loads(
        json.dumps(
            {
                "points": points,
                "max_epochs": cfg.max_epochs,
                "grace_epochs": cfg.grace,
                "reduction_factor": cfg.reduction_factor,
                "train": train,
            }
        )
    )


def _claim(search_dir: str, search: dict) -> None:
    """Write search.json, or check that the one there is this search's (UserError otherwise)."""
    path = storage.join(search_dir, SEARCH_FILE)
    if storage.kind(path) == "file":
        there = json.loads(storage.read_text(path))
        if there != search:
            differ = "; ".join(_difference(there, search))
            raise UserError(
                f"{search_dir} holds a search with other settings ({path}: {differ}); give another --name, or "
                f"the same --trials/--space/--max-epochs/--seed and training flags to continue it"
            )
        return
    storage.write_text(path, json.dumps(search, indent=2) + "\n")


def _difference(there: dict, here: dict) -> list[str]:
    """What differs between two search keys, one item each: ``max_epochs 30 there, 112 here`` for a number,
    ``train.lr`` for a training setting, ``points`` for the sampled trials."""
    items = []
    for key in sorted(set(there) | set(here)):
        a, b = there.get(key), here.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            items += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif isinstance(a, (int, float, str)) and isinstance(b, (int, float, str)):
            items.append(f"{key} {a} there, {b} here")
        else:
            items.append(key)
    return items


def _slots(base: TrainConfig) -> int:
    """Trials that can train at once: trainers of ``base``'s layout that fit the cluster's CPUs (and GPUs)."""

    have = ray.cluster_resources()
    slots = int(have.get("CPU", 0) // (base.workers * base.cpus_per_worker))
    if base.use_gpu:
        slots = min(slots, int(have.get("GPU", 0) // base.workers))
    return max(1, slots)


def _tuner(cfg: TuneConfig, base: TrainConfig, points: list[dict], search_dir: str):
    """A new Tuner over ``points`` (trial k = ``points[k - 1]``), or the interrupted one restored."""
    report_every = max(1, cfg.grace // 2)
    trainable = ray_tune.with_resources(
        ray_tune.with_parameters(run_trial, base=base, points=points, report_every=report_every), TRIAL_RESOURCES
    )
    experiment = storage.join(search_dir, TUNE_DIR)
    if ray_tune.Tuner.can_restore(experiment):
        print(f"continuing the search in {experiment} (finished trials are kept)", flush=True)
        return ray_tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=False)
    slots = _slots(base)
    print(
        f"search: {len(points)} trials of up to {cfg.max_epochs} epochs, {slots} at a time "
        f"({base.workers} workers x {base.cpus_per_worker:g} CPUs each); ASHA on val AP50 from epoch {cfg.grace}, "
        f"keeping the best 1/{cfg.reduction_factor:g} at each rung; validation every {report_every} epochs",
        flush=True,
    )
    scheduler = ASHAScheduler(
        time_attr="epoch",
        max_t=cfg.max_epochs,
        grace_period=cfg.grace,
        reduction_factor=cfg.reduction_factor,
        stop_last_trials=False,
    )  # a trial at max_epochs ends by itself, its driver writing the RUN
    return ray_tune.Tuner(
        trainable,
        param_space={"trial": ray_tune.grid_search(list(range(1, len(points) + 1)))},
        tune_config=ray_tune.TuneConfig(
            metric=METRIC,
            mode="max",
            scheduler=scheduler,
            max_concurrent_trials=slots,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=ray_tune.RunConfig(
            name=TUNE_DIR,
            storage_path=search_dir,
            verbose=0,
            callbacks=[TrialLines(base, points)],
            failure_config=ray_tune.FailureConfig(max_failures=0),
        ),
    )


def describe(point: dict) -> str:
    """A trial's configuration on one line."""
    parts = [
        point.get("backbone"),
        f"lr {point['lr']:.2e}" if "lr" in point else None,
        f"batch {point['batch']}" if "batch" in point else None,
        f"aug {point['aug']:.2f}" if "aug" in point else None,
        f"{point['epochs']} epochs",
    ]
    return ", ".join(p for p in parts if p)


class TrialLines(ray_tune.Callback):
    """raydet's lines for the search, in the driver: a trial starts, validates, ends, fails (Tune's own status
    tables are off: ``verbose=0``)."""

    def __init__(self, base: TrainConfig, points: list[dict]):
        self.base, self.points = base, points

    def _say(self, trial, text: str) -> None:
        # the console's stdout: Tune's own prints (its start-up box, which verbose=0 keeps) are redirected
        print(f"{trial_name(trial.config['trial'])}: {text}", file=sys.__stdout__, flush=True)

    def _release(self, trials) -> None:
        """Free the Train workers' CPUs of every ended trial (``PlacementGroupNote`` says why)."""
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR"):
                release(trial_run(self.base, trial.config["trial"]))

    def on_trial_start(self, iteration, trials, trial, **info):
        # Not when a trial ends: its actor (and so its trainer's controller) may live a moment longer, and a
        # controller that sees its workers go restarts them in a new placement group. When the next trial starts,
        # Tune has freed the ended trial's resources, which kills its actor.
        self._release(trials)
        self._say(trial, f"started ({describe(self.points[trial.config['trial'] - 1])})")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epochs = self.points[trial.config["trial"] - 1]["epochs"]
        self._say(
            trial,
            f"epoch {result['epoch']}/{epochs}  val AP50 {result[METRIC]:.3f}  ({result.get('time_total_s', 0):.0f} s)",
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = (trial.last_result or {}).get("epoch", 0)
        epochs = self.points[trial.config["trial"] - 1]["epochs"]
        self._say(trial, "finished" if last >= epochs else f"stopped by ASHA after epoch {last}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._say(trial, "failed; the search goes on (its error is in the table at the end)")


# ------------------------------------------------------------------------------------------------ results
def _record(result, base: TrainConfig, points: list[dict]) -> dict:
    """One finished Tune trial -> its table record (raydet.tune.table); a trial that ASHA stopped gets its model
    and history written from its last reported checkpoint first."""

    k = result.config["trial"]
    point = points[k - 1]
    cfg = trial_train_config(base, point, k, 1)
    run, metrics = storage.join(cfg.out, cfg.name), result.metrics or {}
    record = {"trial": k, "run": run, "config": point, "seconds": metrics.get("time_total_s"), "error": None}
    if result.error is not None:
        return record | {
            "status": "failed",
            "epochs_run": metrics.get("epoch", 0),
            "val_ap50": None,
            "error": _one_line(result.error),
        }
    history = Run(run).read_history()
    if metrics.get("checkpoint_path") and (not history or history[-1]["epoch"] < metrics.get("epoch", 0)):
        with _lines_into(storage.join(run, TRAIN_LOG)):
            history = list(finish_from_checkpoint(cfg, metrics["checkpoint_path"]).history)
    last = history[-1]["epoch"] if history else 0
    validated = [row[METRIC] for row in history if METRIC in row]
    return record | {
        "status": "done" if last >= point["epochs"] else "stopped",
        "epochs_run": last,
        "val_ap50": validated[-1] if validated else None,
    }


def _one_line(error: BaseException, limit: int = 200) -> str:
    """The last non-empty line of an error's text (a remote traceback ends with the exception's own line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
