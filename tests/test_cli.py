"""The CLI turns arguments into configs and refuses bad ones before any work starts."""

import subprocess
import sys

import pytest

from raydet import cli
from raydet import config as C
from raydet.errors import UserError


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


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["prepare", "d", "--out", "o", "--image-size", "-3"], "--image-size must be positive, got -3"),
        (["prepare", "d", "--out", "o", "--classes", "a,,b"], "malformed class list 'a,,b'"),
        (["evaluate", "r", "--data", "p", "--models", "float,bogus"], "float,bogus"),
        (["evaluate", "r", "--data", "p", "--batch-size", "0"], "--batch-size must be positive, got 0"),
        (
            ["train", "p", "--out", "o", "--name", "n", "--clip-norm", "-1"],
            "--clip-norm must be >= 0 (0: no clipping), got -1.0",
        ),
        (
            ["train", "p", "--out", "o", "--name", "n", "--warmup-epochs", "-1"],
            "--warmup-epochs must be >= 0, got -1.0",
        ),
        (["report", "r", "--screenshot", "shot.jpg"], "--screenshot must name a .png file, got 'shot.jpg'"),
    ],
)
def test_bad_arguments_exit_2_naming_the_value(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_bad_arguments_stop_before_heavy_imports():
    # A bad value must be refused before TensorFlow or Ray are even imported (fast, no side effects).
    code = (
        "import sys; from raydet import cli\n"
        "try: cli.main(['train', 'p', '--out', 'o', '--name', 'n', '--epochs', '0'])\n"
        "except SystemExit as e: assert e.code == 2\n"
        "assert 'tensorflow' not in sys.modules and 'ray' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def _one_line_error(capsys, command: str, *named: str) -> str:
    """The whole of stderr: one line ``raydet <command>: error: ...`` naming every ``named`` text, no traceback."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"raydet {command}: error: "), err
    for text in named:
        assert text in lines[0], (text, err)
    return lines[0]


def test_bad_arguments_are_one_line_without_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["prepare", "d", "--out", "o", "--classes", "a,,b"])
    assert exc.value.code == 2
    _one_line_error(capsys, "prepare", "malformed class list 'a,,b'")


def _voc_devkit(root):
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "Annotations" / "a.xml").write_text("<annotation><filename>a.jpg</filename></annotation>")


def _user_error_cases(tmp):
    """(argv, command, texts the one line must name) for each user error of each command, on real folders."""
    empty = tmp / "empty"
    empty.mkdir()
    foreign = tmp / "foreign"  # --out holding someone else's train/ folder
    (foreign / "train").mkdir(parents=True)
    several = tmp / "several"
    _voc_devkit(several / "VOC2007")
    _voc_devkit(several / "VOC2012")
    data = tmp / "data"
    _voc_devkit(data)
    no_eval = tmp / "run_without_eval"
    no_eval.mkdir()
    missing = str(tmp / "missing")
    return [
        (["prepare", str(empty), "--out", str(tmp / "p")], "prepare", ["no VOC annotations found in", str(empty)]),
        (["prepare", missing, "--out", str(tmp / "p")], "prepare", ["dataset not found", missing]),
        (["prepare", str(data), "--out", str(foreign)], "prepare", [str(foreign), "refusing to overwrite"]),
        (["prepare", str(several), "--out", str(tmp / "p")], "prepare", ["several VOC devkits", "VOC2007", "VOC2012"]),
        (["prepare", str(data), "--out", str(tmp / "p"), "--classes", "a,a"], "prepare", ["repeated class names"]),
        (["train", missing, "--out", str(tmp / "runs"), "--name", "r"], "train", [missing, "manifest"]),
        (["train", missing, "--out", "o", "--name", "r", "--precision", "fp8"], "train", ["--precision", "'fp8'"]),
        (
            ["train", missing, "--out", "o", "--name", "r", "--precision", "mixed_float16"],
            "train",
            ["mixed_float16 needs --gpu"],
        ),
        (
            ["train", missing, "--out", "o", "--name", "r", "--qat", "--precision", "mixed_bfloat16"],
            "train",
            ["--qat", "float32"],
        ),
        (["evaluate", missing, "--data", str(tmp / "p")], "evaluate", [missing]),
        (["quantize", missing], "quantize", [missing]),
        (["predict", missing, str(data), "--out", str(tmp / "pred")], "predict", [missing]),
        (["report", str(no_eval)], "report", [str(no_eval / "eval" / "report.json"), "not found"]),
    ]


def test_each_commands_user_errors_are_one_line_naming_the_value_exit_2(tmp_path, capsys):
    for argv, command, named in _user_error_cases(tmp_path):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # refused while parsing, before any work
            code = exc.code
        assert code == 2, argv
        _one_line_error(capsys, command, *named)


def test_bad_input_prints_one_line_and_internal_errors_keep_their_traceback(monkeypatch, capsys):
    import numpy as np

    def missing_prep(cfg, command):
        from raydet.ingest.prep import Prep

        Prep("/nonexistent/prep").read_manifest()  # raydet's own check: a UserError naming the path

    monkeypatch.setattr(cli, "run_quietly", missing_prep)
    assert cli.main(["train", "/nonexistent/prep", "--out", "runs", "--name", "r"]) == 2
    _one_line_error(capsys, "train", "/nonexistent/prep/manifest.json")

    def bug(cfg, command):
        np.zeros(3).reshape(2, 2)  # a ValueError from inside NumPy: a bug, not bad input

    monkeypatch.setattr(cli, "run_quietly", bug)
    with pytest.raises(ValueError, match="reshape"):
        cli.main(
            ["train", "/nonexistent/prep", "--out", "runs", "--name", "r"]
        )  # propagates: Python prints the traceback

    def deep_bug(cfg, command):
        from raydet.detector.boxes import xywh_to_xyxy

        xywh_to_xyxy(np.zeros((2, 3)))  # a plain ValueError raised inside raydet itself: still a bug

    monkeypatch.setattr(cli, "run_quietly", deep_bug)
    with pytest.raises(ValueError) as info:
        cli.main(["train", "/nonexistent/prep", "--out", "runs", "--name", "r"])
    assert not isinstance(info.value, UserError)


def test_an_internal_value_error_prints_a_traceback_in_a_real_process():
    code = (
        "import sys; from raydet import cli\n"
        "def bug(cfg, command):\n"
        "    from raydet.detector.boxes import xywh_to_xyxy\n"
        "    import numpy as np; xywh_to_xyxy(np.zeros((2, 3)))\n"
        "cli.run_quietly = bug\n"
        "sys.exit(cli.main(['train', 'p', '--out', 'o', '--name', 'n']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "must have shape (..., 4)" in proc.stderr


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(cfg, command):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_quietly", interrupted)
    assert cli.main(["train", "/nonexistent/prep", "--out", "runs", "--name", "r"]) == 130
    err = capsys.readouterr().err
    assert err == "raydet train: interrupted\n"
