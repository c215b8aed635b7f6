"""raydet tune, the search (raydet.tune.search): what the search sets itself, the job entry point, and one slow
2-trial search with two Ray Train workers per trial, interrupted and continued (Tuner.restore)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from prep_helpers import make_prep

from raydet.config import TrainConfig, TuneConfig
from raydet.errors import UserError

REPO = Path(__file__).resolve().parents[2]
BASE = TrainConfig(prep="prep", out="/runs", name="search")


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
    with pytest.raises(ValueError, match="not resolved"):
        TuneConfig(train=BASE).grace  # noqa: B018 (the property raises)
    with pytest.raises(UserError, match=r"^--grace-epochs must be at least 1, got 0$"):  # no "None" in it
        TuneConfig(train=BASE, grace_epochs=0)


def test_the_cli_refuses_a_grace_period_longer_than_the_longest_trial_before_any_work():
    from raydet.cli import config_from_args, get_args_parser

    def parse(*extra):
        return config_from_args(get_args_parser().parse_args(["tune", "prep", "--out", "o", "--name", "n", *extra]))

    with pytest.raises(UserError, match=r"--grace-epochs must be at least 1 and at most --max-epochs 40, got 50"):
        parse("--grace-epochs", "50", "--space", "epochs=10|40")
    with pytest.raises(UserError, match=r"--grace-epochs must be at least 1 and at most --max-epochs 30, got 50"):
        parse("--grace-epochs", "50", "--max-epochs", "30")
    assert parse("--grace-epochs", "50").max_epochs is None  # checked once the PREP gives the default


def test_max_epochs_left_out_is_what_raydet_train_runs_so_trial_1_is_that_run():
    """No --max-epochs: the longest trial trains as long as a default `raydet train` of the same PREP (its auto
    schedule), or as long as the longest epochs= of --space; a given --max-epochs stays."""
    from raydet.tune.search import resolve_max_epochs

    one = replace(BASE, workers=1)
    # 158 train images in batches of 16: 9 steps an epoch; ceil(1000 / 9) = 112 epochs (raccoon's default run)
    assert resolve_max_epochs(TuneConfig(train=one), one, 158).max_epochs == 112
    # two workers of 8: each 79 images, 9 local batches of 8 -> the same 112; 1,600 images -> 100 steps -> 20 (floor)
    two = replace(BASE, workers=2)
    assert resolve_max_epochs(TuneConfig(train=two), two, 158).max_epochs == 112
    assert resolve_max_epochs(TuneConfig(train=two), two, 1600).max_epochs == 20
    # three workers: 52 images each in local batches of 5 -> 10 steps -> 100 (not 158 // 16 = 9 -> 112)
    three = replace(BASE, workers=3)
    assert resolve_max_epochs(TuneConfig(train=three), three, 158).max_epochs == 100
    assert resolve_max_epochs(TuneConfig(train=one, space="epochs=10|40"), one, 158).max_epochs == 40
    assert resolve_max_epochs(TuneConfig(train=one, space="epochs=5..25"), one, 158).max_epochs == 25
    assert resolve_max_epochs(TuneConfig(train=one, max_epochs=30), one, 158).max_epochs == 30
    with pytest.raises(UserError, match=r"--grace-epochs must be at least 1 and at most --max-epochs 112, got 200"):
        resolve_max_epochs(TuneConfig(train=one, grace_epochs=200), one, 158)


def test_a_search_folder_with_other_settings_is_refused_naming_what_differs(tmp_path):
    """A search started with --max-epochs 30 cannot be continued as one of 112 epochs (the old default against
    the new): the refusal names the setting and both values, and search.json is left as it was."""
    from raydet.tune.search import SEARCH_FILE, _claim

    first = {"points": [{"lr": 1e-3}], "max_epochs": 30, "grace_epochs": 6, "train": {"lr": 1e-3, "seed": 0}}
    _claim(str(tmp_path), first)
    _claim(str(tmp_path), first)  # the same search: continued
    other = first | {"max_epochs": 112, "grace_epochs": 22, "train": {"lr": 2e-3, "seed": 0}}
    with pytest.raises(
        UserError, match=r"json: grace_epochs 6 there, 22 here; max_epochs 30 there, 112 here; train\.lr\)"
    ):
        _claim(str(tmp_path), other)
    assert json.loads((tmp_path / SEARCH_FILE).read_text()) == first


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear (exit {proc.returncode}): {proc.communicate()[0][-3000:]}")
        time.sleep(0.5)


@pytest.mark.slow
def test_two_trial_search_with_two_workers_writes_its_table_and_continues_after_an_interrupt(tmp_path):
    """Two trials of 2 epochs (no --max-epochs: the space's epochs=2 is the longest, on both runs), each two 1-CPU
    Ray Train workers (so one trial at a time on 2 CPUs); Ctrl-C once
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
