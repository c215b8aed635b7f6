"""``raydet run``: every stage in order, resumable, ending with a table of results.

Folders under ``OUT`` (see docs/FORMATS.md for what each holds):

- ``OUT/data``: the synthetic VOC dataset (only without ``--data``);
- ``OUT/prep``: Parquet shards + manifest;
- ``OUT/runs/main``: the training run, its ``.tflite`` files and ``eval/`` (report + drawings);
- ``OUT/pipeline.json``: the settings each finished stage ran with, so a re-run skips what is already done.

Re-running the same command resumes: synth and prepare are skipped when their outputs exist and were made
with the same settings, training continues from its newest checkpoint (Ray Train), a finished training is
not restarted, and quantization runs again only when the float model is newer than the ``.tflite`` file.
On a cluster, ``OUT`` must be storage every node reaches (e.g. an EFS mount): Ray Data writes the shards
from worker nodes and Ray Train keeps its checkpoints under ``OUT/runs``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from raydet import config as C
from raydet.console import stdout_to, verbose
from raydet.infer import FLOAT_FILE
from raydet.runtime import init_ray
from raydet.sizes import format_size

RUN_NAME = "main"
STATE_FILE = "pipeline.json"
QUANT_MODES = ("int8",)  # what `run` evaluates beside float; `raydet quantize RUN` makes the others
EVAL_MODELS = ("float", "int8")
QUANT_LOG = "quantize.log"  # RUN/quantize.log: what `raydet quantize` prints, kept out of `raydet run`'s console
SYNTH_MIN_SIZE = C.SynthConfig.image_size  # draw shapes at >= 128 px so small --image-size still sees clean edges


def stage_configs(cfg: C.RunConfig) -> dict:
    """The config of every stage for one ``raydet run``, in order (``synth`` is None with ``--data``)."""
    out = Path(cfg.out)
    data = cfg.data if cfg.data is not None else str(out / "data")
    synth = None
    if cfg.data is None:
        synth = C.SynthConfig(out=data, images=cfg.images, image_size=max(SYNTH_MIN_SIZE, cfg.image_size))
    prepare = C.PrepareConfig(data=data, out=str(out / "prep"), image_size=cfg.image_size, address=cfg.address)
    train = C.TrainConfig(prep=prepare.out, out=str(out / "runs"), name=RUN_NAME, workers=cfg.workers,
                          use_gpu=cfg.use_gpu, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                          backbone=cfg.backbone, pretrained=cfg.pretrained, freeze_bn=cfg.freeze_bn,
                          address=cfg.address)
    run_dir = str(Path(train.out) / train.name)
    quantize = C.QuantizeConfig(run=run_dir, modes=QUANT_MODES, address=cfg.address)
    evaluate = C.EvaluateConfig(run=run_dir, data=prepare.out, models=EVAL_MODELS, draw=cfg.draw,
                                coco_out=str(Path(run_dir) / "eval" / "coco"), address=cfg.address)
    return {"synth": synth, "prepare": prepare, "train": train, "quantize": quantize, "evaluate": evaluate}


def _key(stage_cfg, *, drop: tuple[str, ...] = ("address",)) -> dict:
    """A config as plain JSON values, without fields that do not change the stage's output."""
    d = dataclasses.asdict(stage_cfg)
    for name in drop:
        d.pop(name, None)
    return json.loads(json.dumps(d))


def _train_key(train: C.TrainConfig, prepare: C.PrepareConfig) -> dict:
    # Everything that makes a checkpoint unusable for a resume; epochs is not in it (more epochs = resume).
    return {"prepare": _key(prepare), "train": _key(train, drop=("address", "epochs"))}


def _load_state(out: Path) -> dict:
    path = out / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_state(out: Path, state: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(out / STATE_FILE)  # atomic: an interrupted run never leaves half a state file


def _epochs_done(run_dir: Path) -> int:
    """Highest epoch in RUN/history.jsonl (0 when there is none)."""
    history = run_dir / "history.jsonl"
    if not history.is_file():
        return 0
    epochs = [json.loads(line)["epoch"] for line in history.read_text().splitlines() if line.strip()]
    return max(epochs, default=0)


def _set_aside(run_dir: Path) -> Path:
    """Rename a run made with other settings to RUN-<n> (kept, never deleted) so training starts afresh."""
    n = 1
    while (old := run_dir.with_name(f"{run_dir.name}-{n}")).exists():
        n += 1
    run_dir.rename(old)
    return old


def _is_newer(path: Path, than: Path) -> bool:
    return path.is_file() and than.is_file() and path.stat().st_mtime >= than.stat().st_mtime


def results_table(models: dict) -> str:
    """Per model: COCO AP50, mAP@[.5:.95], AP75, VOC AP50, images/s, file size (decimal units, as in
    ``RUN/eval/report.md``); a missing figure prints "-"."""
    head = ("model", "AP50", "mAP", "AP75", "VOC AP50", "images/s", "size")
    rows = [head]
    for name, m in models.items():
        def num(key, fmt="{:.3f}"):
            return fmt.format(m[key]) if m.get(key) is not None else "-"
        rows.append((name, num("coco_map_50"), num("coco_map"), num("coco_map_75"), num("voc_map_50"),
                     num("images_per_s", "{:.0f}"), format_size(m.get("size_bytes"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(cfg: C.RunConfig) -> dict:
    """Run synth (without --data), prepare, train, quantize (int8) and evaluate (float, int8) into ``cfg.out``.

    Returns ``{"out", "run", "report", "images", "models": report["models"], "seconds": {stage: s}}``.
    """
    cfgs = stage_configs(cfg)
    out = Path(cfg.out)
    state = _load_state(out)
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()
    init_ray(cfg.address)  # once: every stage below finds Ray up and reuses it
    seconds["ray start"] = time.perf_counter() - t_all

    def banner(stage: str, what: str) -> float:
        print(f"\n=== raydet run: {stage}: {what}", flush=True)
        return time.perf_counter()

    # 1. synth: only without --data, skipped when OUT/data was written with the same settings.
    redo = False
    if cfgs["synth"] is not None:
        synth = cfgs["synth"]
        if state.get("synth") == _key(synth) and Path(synth.out).is_dir():
            print(f"=== raydet run: synth: {synth.out} already holds {synth.images} images, skipped", flush=True)
        else:
            from raydet.synth import write_synthetic

            t = banner("synth", f"{synth.images} images of {synth.image_size} px -> {synth.out}")
            if Path(synth.out).exists():
                shutil.rmtree(synth.out)  # our own folder, made with other settings: stale files would mix in
            write_synthetic(synth)
            seconds["synth"] = time.perf_counter() - t
            state = {"synth": _key(synth)}  # everything downstream is stale now
            _save_state(out, state)
            redo = True

    # 2. prepare: skipped when OUT/prep came from the same data and settings (delete it after editing --data).
    prep = cfgs["prepare"]
    manifest_path = Path(prep.out) / "manifest.json"
    if not redo and state.get("prepare") == _key(prep) and manifest_path.is_file():
        print(f"=== raydet run: prepare: {manifest_path} matches, skipped", flush=True)
    else:
        from raydet.data import prepare

        t = banner("prepare", f"{prep.data} -> {prep.out} at {prep.image_size} px")
        prepare(prep)
        seconds["prepare"] = time.perf_counter() - t
        state = {k: v for k, v in state.items() if k == "synth"} | {"prepare": _key(prep)}
        _save_state(out, state)

    # 3. train: resumes by itself (same --out/--name); a run made from other data or settings is set aside.
    train_cfg = cfgs["train"]
    run_dir = Path(train_cfg.out) / train_cfg.name
    key = _train_key(train_cfg, prep)
    if run_dir.exists() and state.get("train") != key:
        print(f"=== raydet run: train: {run_dir} was made with other data or settings; kept as "
              f"{_set_aside(run_dir)}", flush=True)
    state["train"] = key
    _save_state(out, state)
    done = _epochs_done(run_dir)
    if done >= train_cfg.epochs and (run_dir / FLOAT_FILE).is_file():
        print(f"=== raydet run: train: {run_dir} has {done} of {train_cfg.epochs} epochs, skipped", flush=True)
    else:
        from raydet.train import train

        workers = "default workers" if train_cfg.workers is None else f"{train_cfg.workers} workers"
        t = banner("train", f"{workers}, epochs {done + 1}-{train_cfg.epochs}, "
                            f"batch {train_cfg.batch_size} -> {run_dir}")
        train(train_cfg)
        seconds["train"] = time.perf_counter() - t

    # 4. quantize: again whenever the float model changed since the .tflite files were written.
    quant = cfgs["quantize"]
    float_model = run_dir / FLOAT_FILE
    if all(_is_newer(run_dir / f"model_{m}.tflite", float_model) for m in quant.modes):
        print(f"=== raydet run: quantize: {', '.join(quant.modes)} newer than {float_model}, skipped", flush=True)
    else:
        from raydet.quantize import quantize

        t = banner("quantize", f"{', '.join(quant.modes)} from {float_model}")
        log = None if verbose() else run_dir / QUANT_LOG  # the converter's step-by-step lines
        with stdout_to(log):
            written = quantize(quant)
        sizes = ", ".join(f"{Path(p).name} ({format_size(Path(p).stat().st_size)})" for p in written.values())
        print(f"wrote {sizes}" + (f"; converter log: {log}" if log else ""), flush=True)
        seconds["quantize"] = time.perf_counter() - t

    # 5. evaluate: always (it is the answer the user came for; a few seconds on the test split).
    from raydet.evaluate import evaluate

    ev = cfgs["evaluate"]
    t = banner("evaluate", f"{', '.join(ev.models)} on {ev.data} (test split), {ev.actors} actors")
    report = evaluate(ev, show_table=False)  # the table comes once, at the end
    seconds["evaluate"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_all

    eval_dir = run_dir / "eval"
    print("\n=== raydet run: results on the test split")
    print(results_table(report["models"]))
    print(f"\nreport:   {eval_dir / 'report.html'} (and report.md, report.json)")
    print(f"curves:   {run_dir / 'curves.png'}; TensorBoard: tensorboard --logdir {run_dir.parent}")
    print(f"pictures: {eval_dir / 'images'}")
    print(f"models:   {float_model} and {', '.join(str(run_dir / f'model_{m}.tflite') for m in quant.modes)}")
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()), flush=True)
    return {"out": str(out), "run": str(run_dir), "report": str(eval_dir / "report.json"),
            "images": str(eval_dir / "images"), "models": report["models"], "seconds": seconds}
