"""`raydet run`: which stages run on a first run and a re-run, with stand-in stages (fast). The real pipeline runs
end to end on two nodes through a bucket in tests/test_jobs.py (by `ray job submit`, then again from this machine)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import types
from pathlib import Path

import pytest

from raydet import pipeline
from raydet.config import RunConfig

# ---------------------------------------------------------------------------------------------------------
# Orchestration, with stand-in stages that write the files of docs/FORMATS.md and log their calls.


@pytest.fixture
def fake_stages(monkeypatch):
    calls: list[tuple[str, object]] = []

    def write_synthetic(cfg):
        calls.append(("synth", cfg))
        Path(cfg.out).mkdir(parents=True)
        (Path(cfg.out) / "made.txt").write_text(str(cfg.images))
        return {}

    def prepare(cfg):
        calls.append(("prepare", cfg))
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "manifest.json").write_text(json.dumps({"image_size": cfg.image_size}))
        return {}

    def train(cfg):
        calls.append(("train", cfg))
        run = Path(cfg.out) / cfg.name
        run.mkdir(parents=True, exist_ok=True)
        # resumes like Ray Train: only the missing epochs (read here as the real driver does, not with
        # raydet.pipeline's helper, which is under test)
        history = run / "history.jsonl"
        done = len(history.read_text().splitlines()) if history.is_file() else 0
        with open(history, "a") as f:
            for epoch in range(done + 1, cfg.epochs + 1):
                f.write(json.dumps({"epoch": epoch, "loss": 1.0 / epoch}) + "\n")
        (run / "model.keras").write_text("float")

    def quantize(cfg):
        calls.append(("quantize", cfg))
        print("converting ...")  # what the real one prints, step by step
        for mode in cfg.modes:
            (Path(cfg.run) / f"model_{mode}.tflite").write_text(mode)
        return {m: str(Path(cfg.run) / f"model_{m}.tflite") for m in cfg.modes}

    def evaluate(cfg, show_table=True):
        calls.append(("evaluate", cfg))
        report = {
            "models": {
                m: {
                    "coco_map_50": 0.95,
                    "coco_map": 0.6,
                    "coco_map_75": 0.7,
                    "voc_map_50": 0.96,
                    "images_per_s": 500.0,
                    "size_bytes": 2048,
                }
                for m in cfg.models
            }
        }
        (Path(cfg.run) / "eval").mkdir(exist_ok=True)
        (Path(cfg.run) / "eval" / "report.json").write_text(json.dumps(report))
        return report

    for name, fn in [
        ("ingest.synth", write_synthetic),
        ("ingest.prepare", prepare),
        ("train.driver", train),
        ("export.quantize", quantize),
        ("evaluate.pool", evaluate),
    ]:
        module = types.ModuleType(f"raydet.{name}")
        setattr(module, fn.__name__, fn)
        monkeypatch.setitem(sys.modules, f"raydet.{name}", module)
    monkeypatch.setattr(pipeline, "init_ray", lambda address, **kw: None)
    return calls


def stages(calls) -> list[str]:
    names = [name for name, _ in calls]
    calls.clear()
    return names


def test_first_run_runs_every_stage_with_the_run_settings(fake_stages, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAYDET_VERBOSE", raising=False)
    out = tmp_path / "out"
    result = pipeline.run(RunConfig(out=str(out), images=100, image_size=48, workers=2, epochs=3, batch_size=32))
    cfgs = dict(fake_stages)
    assert stages(fake_stages) == ["synth", "prepare", "train", "quantize", "evaluate"]
    assert cfgs["synth"].out == str(out / "data") and cfgs["synth"].images == 100
    assert cfgs["synth"].image_size == 128  # shapes drawn at >= 128 px, then resized by prepare
    assert (cfgs["prepare"].data, cfgs["prepare"].out, cfgs["prepare"].image_size) == (
        str(out / "data"),
        str(out / "prep"),
        48,
    )
    assert (cfgs["train"].workers, cfgs["train"].epochs, cfgs["train"].batch_size) == (2, 3, 32)
    assert cfgs["quantize"].modes == ("int8",) and cfgs["evaluate"].models == ("float", "int8")
    assert result["run"] == str(out / "runs" / "main")
    printed = capsys.readouterr().out
    assert "AP50" in printed and str(out / "runs" / "main" / "eval" / "report.html") in printed
    # quantize's own lines go to RUN/quantize.log; the console gets one line with the file's size
    assert "wrote model_int8.tflite (4 B)" in printed
    assert "converting" not in printed and (out / "runs" / "main" / "quantize.log").is_file()
    assert set(result["seconds"]) >= {"synth", "prepare", "train", "quantize", "evaluate", "total"}


def test_rerun_skips_finished_stages_and_more_epochs_resume(fake_stages, tmp_path, capsys):
    cfg = RunConfig(out=str(tmp_path / "out"), images=100, image_size=48, epochs=2)
    pipeline.run(cfg)
    stages(fake_stages)
    capsys.readouterr()
    pipeline.run(cfg)  # nothing changed: no stage runs, the results table is printed again from report.json
    assert stages(fake_stages) == []
    printed = capsys.readouterr().out
    assert "train: " + str(Path(cfg.out) / "runs" / "main") + " has 2 of 2 epochs, skipped" in printed
    report = Path(cfg.out) / "runs" / "main" / "eval" / "report.json"
    assert f"evaluate: {report} is of these models and settings, skipped" in printed and "0.950" in printed
    time.sleep(0.01)
    report.write_text(report.read_text() + " ")  # another evaluation since (a `raydet evaluate` of the RUN)
    pipeline.run(cfg)
    assert stages(fake_stages) == ["evaluate"]
    pipeline.run(dataclasses.replace(cfg, draw=4))  # another evaluate setting
    assert stages(fake_stages) == ["evaluate"]
    time.sleep(0.01)  # a later mtime for the retrained model.keras
    pipeline.run(RunConfig(out=cfg.out, images=100, image_size=48, epochs=4))
    assert stages(fake_stages) == ["train", "quantize", "evaluate"]  # data kept; the new model is re-quantized
    assert "epochs 3-4" in capsys.readouterr().out  # the banner names the epochs still to train
    history = (Path(cfg.out) / "runs" / "main" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [1, 2, 3, 4]  # resumed, each epoch once


def test_changed_data_settings_redo_prepare_and_start_a_new_run(fake_stages, tmp_path):
    out = tmp_path / "out"
    pipeline.run(RunConfig(out=str(out), images=100, image_size=48, epochs=2))
    stages(fake_stages)
    pipeline.run(RunConfig(out=str(out), images=100, image_size=64, epochs=2))
    assert stages(fake_stages) == ["prepare", "train", "quantize", "evaluate"]  # same synthetic data reused
    # The 48 px run cannot be resumed at 64 px: it is kept aside, never deleted.
    assert (out / "runs" / "main-1" / "model.keras").is_file()
    assert len((out / "runs" / "main" / "history.jsonl").read_text().splitlines()) == 2
    pipeline.run(RunConfig(out=str(out), images=200, image_size=64, epochs=2))
    assert stages(fake_stages) == ["synth", "prepare", "train", "quantize", "evaluate"]
    assert (out / "data" / "made.txt").read_text() == "200"  # rewritten, not mixed with the old 100


def test_user_data_skips_synth(fake_stages, tmp_path):
    voc = tmp_path / "voc"
    pipeline.run(RunConfig(data=str(voc), out=str(tmp_path / "out"), epochs=1))
    calls = dict(fake_stages)
    assert stages(fake_stages)[0] == "prepare" and calls["prepare"].data == str(voc)


def test_results_table_rows_and_units():
    table = pipeline.results_table(
        {
            "float": {
                "coco_map_50": 0.9512,
                "coco_map": 0.6,
                "coco_map_75": 0.7004,
                "voc_map_50": 0.96,
                "images_per_s": 180.4,
                "size_bytes": 3 * 1024 * 1024,
            },
            "int8": {"coco_map_50": 0.94, "coco_map": None, "images_per_s": 640.0, "size_bytes": 800 * 1024},
        }
    )
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["model", "AP50", "mAP", "AP75"] and set(lines[1]) <= {"-", " "}
    # decimal units as in report.md: 3 * 1024 * 1024 B = 3,145,728 B = 3.15 MB; 800 * 1024 B = 819.2 kB;
    # a missing metric prints "-".
    assert lines[2].split() == ["float", "0.951", "0.600", "0.700", "0.960", "180", "3.15", "MB"]
    assert lines[3].split() == ["int8", "0.940", "-", "-", "-", "640", "819.2", "kB"]


# ---------------------------------------------------------------------------------------------------------
# The real thing on two Ray nodes.


def test_cluster_settings_reach_the_stages_and_do_not_restart_training():
    cfg = RunConfig(out="o", memory_budget_gb=0.0, resource_timeout_s=5.0)
    stages_ = pipeline.stage_configs(cfg)
    assert stages_["train"].memory_budget_gb == 0.0 and stages_["train"].resource_timeout_s == 5.0
    assert stages_["evaluate"].resource_timeout_s == 5.0
    other = pipeline.stage_configs(RunConfig(out="o"))
    # streaming or a longer wait for nodes changes how the run trains, not what it learns: the checkpoints resume
    assert pipeline._train_key(stages_["train"], stages_["prepare"]) == pipeline._train_key(
        other["train"], other["prepare"]
    )
    with pytest.raises(ValueError, match="--memory-budget-gb must be >= 0"):
        RunConfig(memory_budget_gb=-1.0)


def test_the_recipe_follows_the_data_and_what_the_user_set_wins():
    from raydet.config import AugmentConfig

    synth = pipeline.stage_configs(RunConfig(out="o"))
    t = synth["train"]
    assert (synth["prepare"].image_size, t.backbone, t.epochs, t.batch_size, t.lr, t.warmup_epochs) == (
        96,
        "cnn",
        15,
        32,
        2e-3,
        1.0,
    )
    real = pipeline.stage_configs(RunConfig(data="d", out="o"))
    t = real["train"]
    # photos: image size chosen from the boxes (None), ImageNet backbone, epochs sized in steps (None)
    assert (real["prepare"].image_size, t.backbone, t.pretrained, t.epochs, t.batch_size, t.lr) == (
        None,
        "efficientnet_lite0",
        True,
        None,
        16,
        1e-3,
    )
    assert (t.warmup_epochs, t.ema_decay, t.augment, t.augmentation, t.close_mosaic) == (
        3.0,
        0.99,
        True,
        AugmentConfig(),
        10,
    )
    assert t.augmentation.mosaic == 1.0 and t.augmentation.scale == 0.5
    mine = pipeline.stage_configs(
        RunConfig(
            data="d",
            out="o",
            backbone="cnn",
            epochs=7,
            image_size=128,
            lr=5e-3,
            augmentation=AugmentConfig(mosaic=0.0),
            seed=4,
        )
    )
    t = mine["train"]
    assert (mine["prepare"].image_size, t.backbone, t.epochs, t.lr, t.augmentation.mosaic, t.seed) == (
        128,
        "cnn",
        7,
        5e-3,
        0.0,
        4,
    )


@pytest.mark.parametrize(
    "photos, epochs, max_epochs",
    [(False, None, 15), (True, None, None), (True, 40, 40)],
    ids=["synthetic-recipe", "photos-as-training-would", "photos-given-epochs"],
)
def test_run_tune_puts_the_best_trial_through_quantize_and_evaluate(
    fake_stages, tmp_path, monkeypatch, photos, epochs, max_epochs
):
    """``raydet run --tune N``: the search replaces training (its base run is the recipe's, epochs left to the
    search), then quantize and evaluate work on the best trial's RUN. The longest trial: the synthetic recipe's 15
    epochs; on photos None (the search makes it what a default training of that PREP runs), or --epochs."""
    out, searches = tmp_path / "out", []

    def tune(cfg):
        searches.append(cfg)
        best = Path(cfg.train.out) / cfg.train.name / "trial-2"
        best.mkdir(parents=True)
        (best / "model.keras").write_text("float")
        return types.SimpleNamespace(search_dir=str(best.parent), best_run=str(best))

    module = types.ModuleType("raydet.tune.search")
    module.tune = tune
    monkeypatch.setitem(sys.modules, "raydet.tune.search", module)
    data = str(tmp_path / "voc") if photos else None
    result = pipeline.run(RunConfig(data=data, out=str(out), images=100, image_size=48, epochs=epochs, tune=3))
    calls = dict(fake_stages)
    assert stages(fake_stages) == ["synth", "prepare", "quantize", "evaluate"][(1 if photos else 0) :]  # no training
    (cfg,) = searches
    assert (cfg.trials, cfg.max_epochs, cfg.train.name, cfg.train.epochs) == (3, max_epochs, "tune", None)
    best = str(out / "runs" / "tune" / "trial-2")
    assert calls["quantize"].run == calls["evaluate"].run == result["run"] == best
    assert calls["evaluate"].coco_out == str(Path(best) / "eval" / "coco")
