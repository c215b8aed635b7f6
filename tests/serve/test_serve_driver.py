"""raydet serve, the command (raydet.serve.driver): its arguments refused before any work, and (slow) the command
itself started on a local Ray and Serve of its own, answering on its port, stopped with Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import handset as H
import pytest
from serve_client import Client, free_port, png

from raydet.cli import main

REPO = Path(__file__).resolve().parents[2]
A = H.Obj(1, 1, 0, 5, 1)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "int4"], "--model must be one of ('float', 'dynamic', 'float16', 'int8', 'qat'), got 'int4'"),
        (["--autoscale", "3..1"], "--autoscale must be MIN..MAX with 0 <= MIN <= MAX and MAX >= 1, got 3..1"),
        (["--autoscale", "2-4"], "malformed --autoscale '2-4': expected MIN..MAX replicas, e.g. 1..4"),
        (["--port", "70000"], "--port must be in 1..65535, got 70000"),
        (["--port", "0"], "--port must be in 1..65535, got 0"),
        (["--max-batch-size", "0"], "--max-batch-size must be a whole number >= 1, got 0"),
        (["--replicas", "2", "--autoscale", "1..3"], "--replicas 2 and --autoscale 1..3: give one of them"),
    ],
)
def test_bad_arguments_stop_with_one_line_and_exit_2(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["serve", str(tmp_path), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == f"raydet serve: error: {message}\n"


def test_detach_without_a_cluster_and_a_missing_model_are_refused_before_ray(tmp_path, capsys, monkeypatch):
    import raydet.serve.driver as driver

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    started = []  # Ray may be up already (other tests share one): what matters is that this command never starts it
    monkeypatch.setattr(driver, "init_ray", lambda address: started.append(address))
    run = H.write_run(tmp_path / "run", int8=False)
    assert main(["serve", str(run), "--detach"]) == 2
    assert "--detach needs a cluster" in capsys.readouterr().err
    assert main(["serve", str(run), "--model", "int8"]) == 2
    assert "model(s) int8 not found" in capsys.readouterr().err
    assert started == []


@pytest.mark.slow
def test_raydet_serve_runs_until_ctrl_c(tmp_path):
    """The command itself: a local Ray and Serve of its own, answers on its port, stops on SIGINT with exit 0."""
    run = H.write_run(tmp_path / "run")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_ADDRESS="")
    env.pop("RAY_ADDRESS")
    out_file = tmp_path / "stdout.txt"
    with open(out_file, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "raydet.cli", "serve", str(run), "--port", str(port)],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
    try:
        # 1. up: the command says where it answers (after serve.run returned), and it answers there
        deadline = time.monotonic() + 120
        while "Ctrl-C stops" not in out_file.read_text():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "raydet serve did not come up in 120 s"
            time.sleep(1)
        client = Client(port)
        assert client.request("GET", "/health")[0] == 200
        status, _, body = client.detect(png(H.paint([A])))
        assert status == 200 and json.loads(body)["detections"][0]["class"] == "red"
    finally:
        # 2. Ctrl-C: a clean stop, exit 0
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out_file.read_text().splitlines()
    assert lines[0].startswith("serve: int8 of ") and f"http://127.0.0.1:{port}/detect" in lines[1]
    assert "serve: stopping (Ctrl-C)" in lines
    assert not [line for line in lines if not line.startswith(("serve:", "Ray and TensorFlow messages"))], lines
    with pytest.raises(OSError):  # the port is free again: nothing of it is left running
        Client(port).request("GET", "/health")
