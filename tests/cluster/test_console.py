"""The quiet console: stderr (of this process and its children) goes to a log file, raydet's own lines stay; and a
small `raydet run` whose whole console output is counted."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from raydet.cluster import console

CHILD = [sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"]


def test_stderr_of_the_process_and_its_children_goes_to_the_log(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    log = tmp_path / "logs" / "cmd.log"
    with console.quiet_stderr(log) as path:
        subprocess.run(CHILD, check=True)  # inherits file descriptors 1 and 2, as Ray's processes do
        os.write(2, b"native err\n")  # what TensorFlow's C++ start-up lines do
        print("raydet line", flush=True)
    assert path == log
    assert log.read_text() == "child err\nnative err\n"
    out, err = capfd.readouterr()
    assert "child out" in out and "raydet line" in out and err == ""
    assert f"Ray and TensorFlow messages: {log}" in out  # the log is named once it holds something
    os.write(2, b"after\n")  # restored
    assert capfd.readouterr().err == "after\n"


def test_an_error_still_reaches_the_console_with_the_logs_path(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    log = tmp_path / "cmd.log"
    with pytest.raises(RuntimeError, match="boom"):
        with console.quiet_stderr(log):
            os.write(2, b"why it failed\n")
            raise RuntimeError("boom")
    assert log.read_text() == "why it failed\n"
    assert f"Ray and TensorFlow messages: {log}" in capfd.readouterr().err


def test_verbose_leaves_stderr_alone(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    with console.quiet_stderr(tmp_path / "cmd.log") as path:
        os.write(2, b"shown\n")
    assert path is None and not (tmp_path / "cmd.log").exists()
    assert capfd.readouterr().err == "shown\n"


# Lines only Ray or TensorFlow write: none may reach the console.
INTERNAL = (
    "PlacementGroupCleaner",
    "logging_progress",
    "streaming_executor",
    "oneDNN",
    "cuInit",
    "cuda",
    "cpu_feature_guard",
    "absl",
    "XNNPACK",
    "Warning",
    "WARNING",
    "Traceback",
    "core_worker",
    "RayTrainWorker",
    "pid=",
)


@pytest.mark.slow
def test_a_small_raydet_run_prints_a_short_clean_console(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (console.VERBOSE_ENV, "RAY_ADDRESS")}
    cmd = [
        sys.executable,
        "-m",
        "raydet.cli",
        "run",
        "--out",
        str(tmp_path / "out"),
        "--images",
        "64",
        "--epochs",
        "2",
        "--image-size",
        "32",
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=600)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout[-3000:]
    noise = [line for line in lines if any(word in line for word in INTERNAL)]
    assert not noise, noise
    # 2 epoch lines, a progress line per long pass, the path of report.html; the default 15 epochs add 13 lines
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert any(re.match(r"prepare: decode \+ resize: \d+/\d+ images in", line) for line in lines)
    assert any(line.startswith("report:   ") and line.split()[1].endswith("eval/report.html") for line in lines)
    assert len(lines) <= 45, proc.stdout
