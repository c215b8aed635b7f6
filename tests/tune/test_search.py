"""raydet tune: the --space language (parsed by hand), the trials' configurations, the table, and one slow
2-trial search with two Ray Train workers per trial, interrupted and continued (Tuner.restore)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prep_helpers import make_prep

from raydet.config import AugmentConfig, TrainConfig, TuneConfig
from raydet.errors import UserError
from raydet.tune.space import Choice, Range, build_space, parse_space, sample_trials, trial_train_config
from raydet.tune.table import best_trial, format_table, summary_lines

REPO = Path(__file__).resolve().parents[2]
BASE = TrainConfig(prep="prep", out="/runs", name="search")


# ------------------------------------------------------------------------------------------------ space
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


def test_the_job_entry_point_is_raydet_tune(tmp_path):
    """jobs/tune.py (what `ray job submit ... -- python jobs/tune.py ARGS` runs) parses raydet tune's arguments."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    job = [sys.executable, str(REPO / "jobs" / "tune.py")]
    usage = subprocess.run([*job, "--help"], check=False, capture_output=True, text=True, env=env, timeout=60)
    assert usage.returncode == 0 and "usage: raydet tune" in usage.stdout and "--space" in usage.stdout
    bad = subprocess.run(
        [*job, str(tmp_path), "--out", str(tmp_path), "--name", "t", "--space", "batch=0"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 2 and "--space batch: 0 must be positive" in bad.stderr


def test_tune_config_refuses_what_the_search_sets_itself():
    with pytest.raises(UserError, match="--grace-epochs"):
        TuneConfig(train=BASE, max_epochs=10, grace_epochs=11)
    with pytest.raises(UserError, match="epochs"):
        TuneConfig(train=TrainConfig(prep="p", out="o", name="n", epochs=5))
    assert TuneConfig(train=BASE, max_epochs=30).grace == 6  # 30 // 5
    assert TuneConfig(train=BASE, max_epochs=3).grace == 1


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


# ------------------------------------------------------------------------------------------------ table
RECORDS = [
    {
        "trial": 2,
        "run": "/r/s/trial-2",
        "config": {"lr": 3e-3, "batch": 8, "aug": 1.2, "backbone": "cnn", "epochs": 30},
        "status": "stopped",
        "epochs_run": 6,
        "val_ap50": 0.41,
        "seconds": 61.4,
        "error": None,
    },
    {
        "trial": 1,
        "run": "/r/s/trial-1",
        "config": {"lr": 1e-3, "batch": 16, "aug": 1.0, "backbone": "cnn", "epochs": 30},
        "status": "done",
        "epochs_run": 30,
        "val_ap50": 0.8,
        "seconds": 300.0,
        "error": None,
    },
    {
        "trial": 3,
        "run": "/r/s/trial-3",
        "config": {"lr": 1e-2, "batch": 32, "aug": 0.5, "backbone": "cnn", "epochs": 15},
        "status": "failed",
        "epochs_run": 0,
        "val_ap50": None,
        "seconds": 5.0,
        "error": "UserError: loss became nan",
    },
]


def test_table_has_a_row_per_trial_in_order_with_the_best_marked():
    lines = format_table(RECORDS).splitlines()
    assert lines[0].split("|")[1].strip() == "trial" and set(lines[1]) <= {"|", "-"}
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [r[0] for r in rows] == ["trial-1 *", "trial-2", "trial-3"]
    assert rows[0][1:] == ["cnn", "1.00e-03", "16", "1.00", "30/30", "0.800", "done", "300 s"]
    assert rows[1][5:8] == ["6/30", "0.410", "stopped by ASHA at epoch 6"]
    assert rows[2][6:8] == ["-", "failed: UserError: loss became nan"]
    assert len({len(line) for line in lines}) == 1  # columns aligned


def test_the_best_trial_has_the_highest_val_ap50_among_those_with_a_model():
    assert best_trial(RECORDS)["trial"] == 1
    assert best_trial([RECORDS[2]]) is None
    assert best_trial([RECORDS[1] | {"val_ap50": 0.4}, RECORDS[0]])["trial"] == 2
    lines = summary_lines(RECORDS, "/r/s")
    assert lines[0] == "3 trials: 1 stopped early by ASHA, 1 failed (* = best)"
    assert lines[1] == "best: trial-1 (val AP50 0.800): /r/s/trial-1"
    assert summary_lines([RECORDS[2]], "/r/s")[1] == "no trial produced a model"


# ------------------------------------------------------------------------------------------------ search
def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear (exit {proc.returncode}): {proc.communicate()[0][-3000:]}")
        time.sleep(0.5)


@pytest.mark.slow
def test_two_trial_search_with_two_workers_writes_its_table_and_continues_after_an_interrupt(tmp_path):
    """Two trials of 2 epochs, each two 1-CPU Ray Train workers (so one trial at a time on 2 CPUs); Ctrl-C once
    trial 2 has started, then the same command again: trial 1 is kept as it was, trial 2 ends, the table names the
    best trial, whose RUN holds model.keras."""
    prep, runs = make_prep(tmp_path / "prep"), tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "raydet.cli",
        "tune",
        str(prep),
        "--out",
        str(runs),
        "--name",
        "t",
        "--trials",
        "2",
        "--max-epochs",
        "2",
        "--space",
        "backbone=cnn,batch=16,lr=1e-3..4e-3,epochs=2",
        "--workers",
        "2",
        "--cpus-per-worker",
        "1",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    _wait_for(runs / "t" / "trial-2" / "config.json", proc, timeout=400)  # trial 1 done, trial 2 training
    proc.send_signal(signal.SIGINT)
    first = proc.communicate(timeout=180)[0]
    assert proc.returncode == 130, first
    assert "run the same command again to continue" in first and not (runs / "t" / "trials.json").exists()
    trial_1 = (runs / "t" / "trial-1" / "history.jsonl").read_text()

    again = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=400)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "continuing the search" in again.stdout and "trial-1: started" not in again.stdout
    result = json.loads((runs / "t" / "trials.json").read_text())
    trials = result["trials"]
    assert [t["trial"] for t in trials] == [1, 2] and all(t["status"] in ("done", "stopped") for t in trials)
    assert trials[0]["status"] == "done" and trials[0]["epochs_run"] == 2  # the first trial is never stopped
    best = max(trials, key=lambda t: t["val_ap50"])
    assert result["best"] == best["run"] == str(runs / "t" / f"trial-{best['trial']}")
    for t in trials:  # every trial is an ordinary RUN: model, config, history of the epochs it ran
        run = Path(t["run"])
        assert (run / "model.keras").is_file() and (run / "config.json").is_file()
        assert len((run / "history.jsonl").read_text().splitlines()) == t["epochs_run"]
    assert (runs / "t" / "trial-1" / "history.jsonl").read_text() == trial_1  # not trained again
    table = (runs / "t" / "trials.md").read_text()
    assert f"trial-{best['trial']} *" in table and f"best: trial-{best['trial']}" in again.stdout
    assert "Configuration for experiment" not in first + again.stdout  # Tune's own box stays in the log
