"""The quiet console: stderr (of this process and its children) goes to a log file, raydet's own lines stay.

A whole `raydet run`'s console (no Ray or TensorFlow line, a line per epoch, a few dozen lines in all) is checked on
the pipeline job tests/test_jobs.py submits to two nodes through a bucket (tests/printed.py,
``assert_short_clean_console``): one end-to-end run serves both."""

from __future__ import annotations

import os
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
