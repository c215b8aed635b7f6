"""raydet.tune.space: the --space language (parsed by hand, and refused at the CLI in one line), the default space
centred on the base run, and each trial's configuration as an ordinary run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from raydet.config import AugmentConfig, TrainConfig
from raydet.errors import UserError
from raydet.tune.space import (
    Choice,
    Range,
    build_space,
    longest_epochs,
    parse_space,
    sample_trials,
    trial_train_config,
)

REPO = Path(__file__).resolve().parents[2]
BASE = TrainConfig(prep="prep", out="/runs", name="search")


def test_parse_space_reads_ranges_choices_and_fixed_values():
    space = parse_space("lr=1e-4..3e-3, batch=8|16,backbone=cnn|efficientnet_lite0,aug=0.5..1.5,epochs=12", 30)
    assert space == {
        "lr": Range(1e-4, 3e-3, log=True),
        "batch": Choice((8, 16)),
        "backbone": Choice(("cnn", "efficientnet_lite0")),
        "aug": Range(0.5, 1.5),
        "epochs": Choice((12,)),
    }
    assert parse_space("", 30) == {}
    assert parse_space("epochs=5..10", 30) == {"epochs": Range(5, 10, integer=True)}
    # no --max-epochs yet (it defaults to the space's longest, or the PREP's auto schedule): no upper bound
    assert parse_space("epochs=500", None) == {"epochs": Choice((500,))}
    with pytest.raises(UserError, match=r"^--space epochs: 0 must be at least 1$"):
        parse_space("epochs=0", None)


def test_longest_epochs_is_the_most_a_space_gives_a_trial():
    assert longest_epochs("lr=1e-3,epochs=40|10|25") == 40
    assert longest_epochs("epochs=5..60") == 60
    assert longest_epochs("lr=1e-4..1e-3") is None and longest_epochs(None) is None


@pytest.mark.parametrize(
    "text, named",
    [
        ("foo=1", "'foo'"),  # unknown parameter
        ("lr", "'lr'"),  # no =
        ("lr=3e-3..1e-4", "lr=3e-3..1e-4"),  # low above high
        ("batch=8|x", "'x'"),  # not an integer
        ("batch=8|", "batch=8|"),  # empty choice
        ("backbone=resnet50", "'resnet50'"),  # not a backbone
        ("backbone=cnn..efficientnet_lite0", "backbone"),
        ("epochs=50", "50"),  # above --max-epochs 30
        ("aug=3", "3"),
        ("lr=-1e-3", "-0.001"),
        ("lr=1e-3,lr=2e-3", "'lr' is given twice"),
        ("lr=nan", "'nan'"),
    ],
)
def test_a_bad_space_is_refused_naming_the_bad_part(text, named):
    with pytest.raises(UserError, match="--space") as info:
        parse_space(text, 30)
    assert named in str(info.value)


def test_the_cli_refuses_a_bad_space_with_one_line_and_exit_2_before_any_work(tmp_path):
    """In a process of its own: stderr must hold raydet's one line and nothing else, and a Ray left running by an
    earlier test in this process would add its own warnings to this process's stderr."""
    cli = [sys.executable, "-m", "raydet.cli"]
    args = ["tune", str(tmp_path / "no-prep"), "--out", str(tmp_path), "--name", "t", "--space", "lr=1e-3,depth=4"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    bad = subprocess.run([*cli, *args], check=False, capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2
    err = bad.stderr.strip()
    assert err.count("\n") == 0 and "'depth'" in err and err.startswith("raydet tune: error:")
    assert not (tmp_path / "t").exists()


def test_default_space_is_centred_on_the_base_run_and_trial_1_is_its_centre():
    space = build_space(BASE, "batch=8|32", 30)  # --space replaces the default batch choices
    assert space["lr"] == Range(1e-3 / 3, 3e-3, log=True) and space["batch"] == Choice((8, 32))
    assert space["backbone"] == Choice(("efficientnet_lite0", "efficientnet_lite1"))
    trials = sample_trials(space, BASE, 30, 5, seed=0)
    # trial 1: the base run's own values where the space holds them; 16 is not a choice: the middle one (32)
    assert trials[0] == {"lr": 1e-3, "batch": 32, "aug": 1.0, "backbone": "efficientnet_lite0", "epochs": 30}
    assert trials == sample_trials(space, BASE, 30, 5, seed=0)  # a restored search finds the same trials
    assert trials != sample_trials(space, BASE, 30, 5, seed=1)
    for t in trials[1:]:
        assert 1e-3 / 3 <= t["lr"] <= 3e-3 and t["batch"] in (8, 32) and 0.5 <= t["aug"] <= 1.5
        assert t["epochs"] in (15, 30)


def test_a_trial_config_is_an_ordinary_run_under_runs_name():
    point = {"lr": 2e-3, "batch": 8, "aug": 0.5, "backbone": "cnn", "epochs": 12}
    cfg = trial_train_config(BASE, point, 3, report_every=2)
    assert (cfg.out, cfg.name) == ("/runs/search", "trial-3")
    assert (cfg.lr, cfg.batch_size, cfg.backbone, cfg.epochs, cfg.checkpoint_every) == (2e-3, 8, "cnn", 12, 2)
    aug = cfg.augmentation  # the defaults times 0.5: scale 0.5 -> 0.25, hsv_s 0.7 -> 0.35, mosaic 1 -> 0.5
    assert (aug.scale, aug.hsv_s, aug.mosaic, aug.hflip) == (0.25, 0.35, 0.5, AugmentConfig().hflip)
    strong = trial_train_config(BASE, point | {"aug": 2.0}, 1, 1).augmentation
    assert (strong.scale, strong.hsv_s, strong.mosaic) == (0.95, 0.95, 1.0)  # capped: 1.0, 1.4, 2.0
    assert trial_train_config(BASE, point | {"aug": 0.0}, 1, 1).augment is False
