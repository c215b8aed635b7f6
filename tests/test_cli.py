"""The CLI turns arguments into configs and refuses bad ones before any work starts."""

import subprocess
import sys

import pytest

from raydet import cli
from raydet import config as C


def parse(argv):
    return cli.config_from_args(cli.get_args_parser().parse_args(argv))


def test_prepare_arguments_become_a_config():
    cfg = parse(["prepare", "data", "--out", "prep", "--image-size", "96", "--classes", "raccoon,dog"])
    assert cfg == C.PrepareConfig(data="data", out="prep", image_size=96, classes=("raccoon", "dog"))


def test_report_arguments_become_a_config():
    assert parse(["report", "runs/a"]) == C.ReportConfig(run="runs/a")
    assert parse(["report", "runs/a", "--screenshot", "docs/r.png"]).screenshot == "docs/r.png"


def test_quantize_all_expands_to_every_mode():
    assert parse(["quantize", "run"]).modes == C.QUANT_MODES
    assert parse(["quantize", "run", "--mode", "int8"]).modes == ("int8",)


def test_train_flags():
    cfg = parse(["train", "prep", "--out", "runs", "--name", "n", "--workers", "2", "--gpu", "--qat"])
    assert (cfg.workers, cfg.use_gpu, cfg.qat, cfg.clip_norm) == (2, True, True, 1.0)
    cfg = parse(["train", "prep", "--out", "runs", "--name", "n", "--init-from", "runs/synth", "--clip-norm", "0"])
    assert (cfg.init_from, cfg.clip_norm) == ("runs/synth", 0.0)
    cfg = parse(["train", "prep", "--out", "runs", "--name", "n", "--warmup-epochs", "0.5", "--seed", "3"])
    assert (cfg.warmup_epochs, cfg.seed) == (0.5, 3)
    assert parse(["synth", "s", "--object-size", "0.35,0.95"]).object_size == (0.35, 0.95)


@pytest.mark.parametrize("argv,needle", [
    (["prepare", "d", "--out", "o", "--image-size", "-3"], "--image-size must be positive, got -3"),
    (["prepare", "d", "--out", "o", "--classes", "a,,b"], "malformed class list 'a,,b'"),
    (["evaluate", "r", "--data", "p", "--models", "float,bogus"], "float,bogus"),
    (["evaluate", "r", "--data", "p", "--batch-size", "0"], "--batch-size must be positive, got 0"),
    (["train", "p", "--out", "o", "--name", "n", "--clip-norm", "-1"], "--clip-norm must be >= 0 (0: no clipping), got -1.0"),
    (["train", "p", "--out", "o", "--name", "n", "--warmup-epochs", "-1"], "--warmup-epochs must be between 0 and --epochs 15, got -1.0"),
    (["report", "r", "--screenshot", "shot.jpg"], "--screenshot must name a .png file, got 'shot.jpg'"),
])
def test_bad_arguments_exit_2_naming_the_value(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_bad_arguments_stop_before_heavy_imports():
    # A bad value must be refused before TensorFlow or Ray are even imported (fast, no side effects).
    code = ("import sys; from raydet import cli\n"
            "try: cli.main(['train', 'p', '--out', 'o', '--name', 'n', '--epochs', '0'])\n"
            "except SystemExit as e: assert e.code == 2\n"
            "assert 'tensorflow' not in sys.modules and 'ray' not in sys.modules, sorted(sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_bad_input_prints_one_line_and_internal_errors_keep_their_traceback(monkeypatch, capsys):
    import numpy as np

    def missing_prep(cfg, command):
        from raydet.train import read_manifest
        read_manifest("/nonexistent/prep")  # raydet's own check: a FileNotFoundError naming the path

    monkeypatch.setattr(cli, "run_quietly", missing_prep)
    assert cli.main(["train", "/nonexistent/prep", "--out", "runs", "--name", "r"]) == 1
    err = capsys.readouterr().err
    assert "raydet train: error: /nonexistent/prep/manifest.json" in err and "Traceback" not in err

    def bug(cfg, command):
        np.zeros(3).reshape(2, 2)  # a ValueError from inside NumPy: a bug, not bad input

    monkeypatch.setattr(cli, "run_quietly", bug)
    with pytest.raises(ValueError, match="reshape"):
        cli.main(["train", "/nonexistent/prep", "--out", "runs", "--name", "r"])  # propagates: Python prints the traceback


def test_only_raydet_checking_modules_raise_input_errors():
    from raydet.boxes import xywh_to_xyxy

    try:
        raise ValueError("from here")
    except ValueError as exc:
        assert not cli.is_input_error(exc)  # raised in a test module, not in raydet
    with pytest.raises(ValueError) as info:
        xywh_to_xyxy(__import__("numpy").zeros((2, 3)))
    assert not cli.is_input_error(info.value)  # raydet.boxes is numerical: a bug somewhere upstream
    with pytest.raises(ValueError) as info:
        C.TrainConfig(prep="p", out="o", name="a/b")
    assert cli.is_input_error(info.value)  # raydet.config checks arguments: its message is the whole story


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(cfg, command):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_quietly", interrupted)
    assert cli.main(["train", "/nonexistent/prep", "--out", "runs", "--name", "r"]) == 130
    err = capsys.readouterr().err
    assert err == "raydet train: interrupted\n"
