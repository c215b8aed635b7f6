"""``raydet run``: every stage in order, resumable, ending with a table of results.

Folders under ``OUT`` (see docs/FORMATS.md for what each holds):

- ``OUT/data``: the synthetic VOC dataset (only without ``--data``);
- ``OUT/prep``: Parquet shards + manifest;
- ``OUT/runs/main``: the training run, its ``.tflite`` files and ``eval/`` (report + drawings);
- ``OUT/pipeline.json``: the settings each finished stage ran with, so a re-run skips what is already done.

Re-running the same command resumes: synth and prepare are skipped when their outputs exist and were made
with the same settings, training continues from its newest checkpoint (Ray Train), a finished training is
not restarted, quantization runs again only when the float model is newer than the ``.tflite`` file, and
evaluation only when a model, its settings or its report changed since (the results table is printed either way).
On a cluster, ``OUT`` must be storage every node reaches (a bucket URI such as ``s3://bucket/raydet``, or an EFS
mount): Ray Data writes the shards from worker nodes and Ray Train keeps its checkpoints under ``OUT/runs``. Every
check and file here goes through raydet.cluster.storage, so a URI works wherever a local path does.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import tempfile
import time
from pathlib import Path

from raydet import config as C
from raydet.cluster import storage
from raydet.cluster.console import stdout_to, verbose
from raydet.cluster.runtime import init_ray
from raydet.cluster.sizes import format_size
from raydet.errors import UserError
from raydet.export.run import Run
from raydet.ingest.prep import Prep

RUN_NAME = "main"
TUNE_NAME = "tune"  # OUT/runs/tune: the search of `raydet run --tune N` (trial k: OUT/runs/tune/trial-k)
PIPELINE_STATE_FILE = "pipeline.json"
PIPELINE_QUANT_MODES = ("int8",)  # what `run` quantizes and evaluates beside float (`raydet quantize` makes any)
EVAL_MODELS = ("float", *PIPELINE_QUANT_MODES)
SYNTH_MIN_SIZE = C.SynthConfig.image_size  # draw shapes at >= 128 px so small --image-size still sees clean edges
# The synthetic set's own training settings (README): its 2,400 clean shapes need no ImageNet features, and the
# from-scratch cnn at 96 px reaches its bar in a third of the time the pretrained backbone takes.
SYNTH_RECIPE = {"image_size": 96, "backbone": "cnn", "epochs": 15, "batch_size": 32, "lr": 2e-3, "warmup_epochs": 1.0}


def recipe(cfg: C.RunConfig) -> dict:
    """The settings ``cfg`` leaves None, resolved: the synthetic set's (``SYNTH_RECIPE``) without ``--data``, the
    real-photo defaults of PrepareConfig / TrainConfig with it; what the user set always wins."""
    base = (
        SYNTH_RECIPE
        if cfg.data is None
        else {
            "image_size": C.PrepareConfig.image_size,
            "backbone": C.TrainConfig.backbone,
            "epochs": C.TrainConfig.epochs,
            "batch_size": C.TrainConfig.batch_size,
            "lr": C.TrainConfig.lr,
            "warmup_epochs": C.TrainConfig.warmup_epochs,
        }
    )
    given = {k: getattr(cfg, k) for k in base if hasattr(cfg, k) and getattr(cfg, k) is not None}
    return base | given


def stage_configs(cfg: C.RunConfig) -> dict:
    """The config of every stage for one ``raydet run``, in order (``synth`` is None with ``--data``)."""
    out = storage.normalize(cfg.out)
    data = cfg.data if cfg.data is not None else storage.join(out, "data")
    r = recipe(cfg)
    synth = None
    if cfg.data is None:
        synth = C.SynthConfig(out=data, images=cfg.images, image_size=max(SYNTH_MIN_SIZE, r["image_size"]))
    prepare = C.PrepareConfig(data=data, out=storage.join(out, "prep"), image_size=r["image_size"], address=cfg.address)
    train = C.TrainConfig(
        prep=prepare.out,
        out=storage.join(out, "runs"),
        name=RUN_NAME,
        workers=cfg.workers,
        use_gpu=cfg.use_gpu,
        epochs=r["epochs"],
        batch_size=r["batch_size"],
        lr=r["lr"],
        warmup_epochs=r["warmup_epochs"],
        augment=cfg.augment,
        close_mosaic=cfg.close_mosaic,
        seed=cfg.seed,
        **({"augmentation": cfg.augmentation} if cfg.augmentation is not None else {}),
        backbone=r["backbone"],
        pretrained=cfg.pretrained,
        freeze_bn=cfg.freeze_bn,
        memory_budget_gb=cfg.memory_budget_gb,
        resource_timeout_s=cfg.resource_timeout_s,
        address=cfg.address,
    )
    run_dir = storage.join(train.out, train.name)
    quantize = C.QuantizeConfig(run=run_dir, modes=PIPELINE_QUANT_MODES, address=cfg.address)
    evaluate = C.EvaluateConfig(
        run=run_dir,
        data=prepare.out,
        models=EVAL_MODELS,
        draw=cfg.draw,
        coco_out=storage.join(run_dir, Run.EVAL, "coco"),
        resource_timeout_s=cfg.resource_timeout_s,
        address=cfg.address,
    )
    return {"synth": synth, "prepare": prepare, "train": train, "quantize": quantize, "evaluate": evaluate}


def _key(stage_cfg, *, drop: tuple[str, ...] = ("address",)) -> dict:
    """A config as plain JSON values, without fields that do not change the stage's output."""
    d = dataclasses.asdict(stage_cfg)
    for name in drop:
        d.pop(name, None)
    return json.loads(json.dumps(d))


# TrainConfig fields that leave the checkpoints usable: more epochs resume, the others change where and how the
# run trains, not what it learns.
RESUMABLE_FIELDS = ("address", "epochs", "resource_timeout_s", "memory_budget_gb")


def _train_key(train: C.TrainConfig, prepare: C.PrepareConfig) -> dict:
    """Everything that makes a checkpoint unusable for a resume (a run made otherwise is set aside)."""
    return {"prepare": _key(prepare), "train": _key(train, drop=RESUMABLE_FIELDS)}


def _load_state(out: str) -> dict:
    path = storage.join(out, PIPELINE_STATE_FILE)
    return json.loads(storage.read_text(path)) if storage.kind(path) == "file" else {}


def _save_state(out: str, state: dict) -> None:
    # whole or not at all (storage.write_text): an interrupted run never leaves half a state file
    storage.write_text(storage.join(out, PIPELINE_STATE_FILE), json.dumps(state, indent=2, sort_keys=True))


def _epochs_done(run_dir: str) -> int:
    """Highest epoch in RUN/history.jsonl (0 when there is none)."""
    return max((row["epoch"] for row in Run(run_dir).read_history()), default=0)


def _target_epochs(run_dir: str, train_cfg: C.TrainConfig) -> int | None:
    """The epochs the run trains to: ``--epochs``, or those raydet.train.driver resolved and wrote into RUN/config.json
    (None before the first training of an auto-sized run)."""
    if train_cfg.epochs is not None:
        return train_cfg.epochs
    config = Run(run_dir).read_config(need=("train",), missing_ok=True)
    return config["train"]["epochs"] if config else None


def _set_aside(run_dir: str) -> str:
    """Rename a run made with other settings to RUN-<n> (kept, never deleted) so training starts afresh."""
    n = 1
    while storage.exists(old := f"{run_dir}-{n}"):
        n += 1
    storage.move(run_dir, old)
    return old


def _is_newer(path: str, than: str) -> bool:
    """Whether file ``path`` exists and was written no earlier than file ``than`` (paths or URIs)."""
    mtimes = [storage.mtime(p) for p in (path, than)]
    return None not in mtimes and mtimes[0] >= mtimes[1]


def results_table(models: dict) -> str:
    """Per model: COCO AP50, mAP@[.5:.95], AP75, VOC AP50, images/s, file size (decimal units, as in
    ``RUN/eval/report.md``); a missing figure prints "-"."""
    head = ("model", "AP50", "mAP", "AP75", "VOC AP50", "images/s", "size")
    rows = [head]

    def num(m: dict, key: str, fmt: str = "{:.3f}") -> str:
        return fmt.format(m[key]) if m.get(key) is not None else "-"

    for name, m in models.items():
        rows.append(
            (
                name,
                num(m, "coco_map_50"),
                num(m, "coco_map"),
                num(m, "coco_map_75"),
                num(m, "voc_map_50"),
                num(m, "images_per_s", "{:.0f}"),
                format_size(m.get("size_bytes")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(cfg: C.RunConfig) -> dict:
    """Run synth (without --data), prepare, train, quantize (int8) and evaluate (float, int8) into ``cfg.out``
    (a path or URI).

    Returns ``{"out", "run", "report", "images", "models": report["models"], "seconds": {stage: s}}``.
    """
    cfgs = stage_configs(cfg)
    out = storage.normalize(cfg.out)
    state = _load_state(out)
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()
    # once: every stage below finds Ray up and reuses it; a search prints its own per-trial lines (raydet.tune)
    init_ray(cfg.address, log_to_driver=cfg.tune is None)
    seconds["ray start"] = time.perf_counter() - t_all

    # 1. synth: only without --data, skipped when OUT/data was written with the same settings.
    redo = False
    if cfgs["synth"] is not None:
        synth = cfgs["synth"]
        if state.get("synth") == _key(synth) and storage.kind(synth.out) == "dir":
            print(f"=== raydet run: synth: {synth.out} already holds {synth.images} images, skipped", flush=True)
        else:
            t = _banner("synth", f"{synth.images} images of {synth.image_size} px -> {synth.out}")
            _synth(synth)
            seconds["synth"] = time.perf_counter() - t
            state = {"synth": _key(synth)}  # everything downstream is stale now
            _save_state(out, state)
            redo = True

    # 2. prepare: skipped when OUT/prep came from the same data and settings (delete it after editing --data).
    prep = cfgs["prepare"]
    if not redo and state.get("prepare") == _key(prep) and Prep(prep.out).is_written():
        print(f"=== raydet run: prepare: {Prep(prep.out).manifest} matches, skipped", flush=True)
    else:
        from raydet.ingest.prepare import prepare

        t = _banner("prepare", f"{prep.data} -> {prep.out} at {prep.image_size or 'a size chosen from the boxes,'} px")
        prepare(prep)
        seconds["prepare"] = time.perf_counter() - t
        state = {k: v for k, v in state.items() if k == "synth"} | {"prepare": _key(prep)}
        _save_state(out, state)

    # 3. train (or with --tune, a search whose best trial goes on): resumes by itself (same --out/--name); a run
    # made from other data or settings is set aside.
    if cfg.tune is not None:
        t = _banner("tune", f"{cfg.tune} trials -> {storage.join(cfgs['train'].out, TUNE_NAME)}")
        run_dir = _tune(cfg, cfgs)
        seconds["tune"] = time.perf_counter() - t
    else:
        run_dir = _train(cfgs, state, out, seconds)

    # 4. quantize: again whenever the float model changed since the .tflite files were written.
    float_model = Run(run_dir).file(Run.FLOAT_MODEL)
    quant = dataclasses.replace(cfgs["quantize"], run=run_dir)
    return _evaluate_and_report(cfgs, state, out, run_dir, float_model, quant, seconds, t_all)


def _train(cfgs: dict, state: dict, out: str, seconds: dict) -> str:
    """Stage 3 of ``run``: train RUNS/main unless it is complete; -> its RUN folder."""
    train_cfg, prep = cfgs["train"], cfgs["prepare"]
    run_dir = storage.join(train_cfg.out, train_cfg.name)
    key = _train_key(train_cfg, prep)
    if storage.exists(run_dir) and state.get("train") != key:
        print(
            f"=== raydet run: train: {run_dir} was made with other data or settings; kept as {_set_aside(run_dir)}",
            flush=True,
        )
    state["train"] = key
    _save_state(out, state)
    float_model = Run(run_dir).file(Run.FLOAT_MODEL)
    done, target = _epochs_done(run_dir), _target_epochs(run_dir, train_cfg)
    if target is not None and done >= target and storage.kind(float_model) == "file":
        print(f"=== raydet run: train: {run_dir} has {done} of {target} epochs, skipped", flush=True)
    else:
        from raydet.train.driver import train

        workers = "default workers" if train_cfg.workers is None else f"{train_cfg.workers} workers"
        t = _banner(
            "train",
            f"{train_cfg.backbone}, {workers}, epochs {done + 1}-{target or 'auto'}, "
            f"batch {train_cfg.batch_size} -> {run_dir}",
        )
        train(train_cfg)
        seconds["train"] = time.perf_counter() - t
    return run_dir


def _tune(cfg: C.RunConfig, cfgs: dict) -> str:
    """Stage 3 of ``run --tune N``: the search RUNS/tune (continued when interrupted, its table rewritten when
    complete) -> the best trial's RUN folder. UserError when no trial produced a model."""
    from raydet.tune.search import tune

    base = dataclasses.replace(cfgs["train"], name=TUNE_NAME, epochs=None)
    max_epochs = recipe(cfg)["epochs"]  # None (photos): as a plain training would run
    summary = tune(C.TuneConfig(train=base, trials=cfg.tune, max_epochs=max_epochs, seed=cfg.seed))
    if summary.best_run is None:
        raise UserError(
            f"raydet run --tune {cfg.tune}: no trial of {summary.search_dir} produced a model (its trials.md says why)"
        )
    return summary.best_run


def _evaluate_and_report(
    cfgs: dict,
    state: dict,
    out: str,
    run_dir: str,
    float_model: str,
    quant: C.QuantizeConfig,
    seconds: dict,
    t_all: float,
) -> dict:
    """Stages 4 and 5 of ``run`` on ``run_dir``: quantize when the float model is newer, evaluate (``_evaluate``),
    the summary."""
    from raydet.evaluate.outputs import REPORT_JSON

    if all(_is_newer(Run(run_dir).file(Run.model_name(m)), float_model) for m in quant.modes):
        print(f"=== raydet run: quantize: {', '.join(quant.modes)} newer than {float_model}, skipped", flush=True)
    else:
        t = _banner("quantize", f"{', '.join(quant.modes)} from {float_model}")
        _quantize(quant, run_dir)
        seconds["quantize"] = time.perf_counter() - t

    report, eval_dir = _evaluate(cfgs, state, out, run_dir, seconds)
    seconds["total"] = time.perf_counter() - t_all
    _print_summary(run_dir, eval_dir, report, quant.modes, seconds)
    return {
        "out": out,
        "run": run_dir,
        "report": storage.join(eval_dir, REPORT_JSON),
        "images": storage.join(eval_dir, "images"),
        "models": report["models"],
        "seconds": seconds,
    }


def _evaluate(cfgs: dict, state: dict, out: str, run_dir: str, seconds: dict) -> tuple[dict, str]:
    """Stage 5 of ``run``: evaluate ``run_dir`` again when a model, the settings or the report changed since the
    last evaluation (``state["evaluate"]``; `raydet evaluate` measures again on demand), else read its report.json
    (NaN figures come back as None); -> (the report, the eval folder it is in)."""
    from raydet.evaluate.outputs import REPORT_JSON
    from raydet.evaluate.outputs import eval_dir as evaluated_dir

    ev = dataclasses.replace(cfgs["evaluate"], run=run_dir, coco_out=storage.join(run_dir, Run.EVAL, "coco"))
    eval_dir = evaluated_dir(run_dir)
    report_file = storage.join(eval_dir, REPORT_JSON)
    key = {"settings": _key(ev), "models": _files_key(Run(run_dir).file(Run.model_name(m)) for m in ev.models)}
    if state.get("evaluate") == dict(key, report=_files_key([report_file])):
        print(f"=== raydet run: evaluate: {report_file} is of these models and settings, skipped", flush=True)
        return storage.read_json_object(report_file), eval_dir
    from raydet.evaluate.pool import evaluate

    t = _banner("evaluate", f"{', '.join(ev.models)} on {ev.data} (test split), {ev.actors} actors")
    report = evaluate(ev, show_table=False)  # the table comes once, at the end
    seconds["evaluate"] = time.perf_counter() - t
    eval_dir = evaluated_dir(run_dir)  # a new one in a bucket (RUN/eval.json names it)
    state["evaluate"] = dict(key, report=_files_key([storage.join(eval_dir, REPORT_JSON)]))
    _save_state(out, state)
    return report, eval_dir


def _files_key(paths) -> list:
    """[[path, mtime, bytes], ...] of files (paths or URIs; None for one that is missing): one written again since
    gives another key."""
    mtimes = [(p, storage.mtime(p)) for p in paths]  # None where no file is
    return [[p, mtime, storage.size(p) if mtime is not None else None] for p, mtime in mtimes]


def _banner(stage: str, what: str) -> float:
    print(f"\n=== raydet run: {stage}: {what}", flush=True)
    return time.perf_counter()


def _synth(synth: C.SynthConfig) -> None:
    """Write the synthetic dataset to ``synth.out`` afresh (a URI: written locally, then uploaded)."""
    from raydet.ingest.synth import write_synthetic

    storage.delete_dir(synth.out)  # our own folder, made with other settings: stale files would mix in
    if not storage.is_uri(synth.out):
        write_synthetic(synth)
        return
    with tempfile.TemporaryDirectory(prefix="raydet-synth-") as tmp:
        write_synthetic(dataclasses.replace(synth, out=tmp))
        storage.upload(Path(tmp), synth.out, storage.list_files(tmp))


def _quantize(quant: C.QuantizeConfig, run_dir: str) -> None:
    """``raydet quantize`` with the converter's lines in RUN/quantize.log (on the console with RAYDET_VERBOSE)."""
    from raydet.export.quantize import quantize

    with tempfile.TemporaryDirectory(prefix="raydet-qlog-") as tmp:
        log = None if verbose() else Path(tmp) / Run.QUANT_LOG  # the converter's step-by-step lines
        with stdout_to(log):
            written = quantize(quant)
        shown = Run(run_dir).file(Run.QUANT_LOG)
        if log is not None:
            old = storage.read_bytes(shown) if storage.kind(shown) == "file" else b""
            storage.write_bytes(shown, old + log.read_bytes())
    sizes = ", ".join(f"{posixpath.basename(p)} ({format_size(storage.size(p))})" for p in written.values())
    print(f"wrote {sizes}" + (f"; converter log: {shown}" if log else ""), flush=True)


def _print_summary(
    run_dir: str, eval_dir: str, report: dict, modes: tuple[str, ...], seconds: dict[str, float]
) -> None:
    print("\n=== raydet run: results on the test split")
    print(results_table(report["models"]))
    print(f"\nreport:   {storage.join(eval_dir, 'report.html')} (and report.md, report.json)")
    print(f"curves:   {Run(run_dir).file(Run.CURVES)}; TensorBoard: tensorboard --logdir {posixpath.dirname(run_dir)}")
    print(f"pictures: {storage.join(eval_dir, 'images')}")
    print(
        f"models:   {Run(run_dir).file(Run.FLOAT_MODEL)} and "
        f"{', '.join(Run(run_dir).file(Run.model_name(m)) for m in modes)}"
    )
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()), flush=True)
