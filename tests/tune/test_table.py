"""raydet.tune.table: the trials table, in trial order with the best marked, and the summary lines."""

from __future__ import annotations

from raydet.tune.table import best_trial, format_table, summary_lines

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
