"""raydet.export.runner: which model files a RUN holds (and the refusal naming the missing ones), a model file
without raydet's outputs refused before loading, and ModelRunner predicting the hand-set detector's known maps
(tests/handset.py), and ``batch_plan``, the rows per call of an evaluation. The file names themselves:
tests/export/test_run.py."""

from __future__ import annotations

import handset as H
import numpy as np
import pytest

from raydet.errors import UserError, UserFileNotFoundError
from raydet.export.runner import (
    ModelRunner,
    available_models,
    batch_plan,
    check_model_file,
    check_run,
    require_models,
)


def test_model_files_of_a_run_and_the_refusal_naming_what_is_missing(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"")
    (tmp_path / "model_int8.tflite").write_bytes(b"")
    assert available_models(tmp_path) == ["float", "int8"]
    assert require_models(tmp_path, ("int8", "float")) == {
        "int8": tmp_path / "model_int8.tflite",
        "float": tmp_path / "model.keras",
    }
    with pytest.raises(UserFileNotFoundError) as exc:
        require_models(tmp_path, ("float", "dynamic", "qat"))
    assert str(exc.value) == (
        f"model(s) dynamic, qat not found in {tmp_path} (expected model_dynamic.tflite, model_qat.tflite); "
        "this run has: float, int8; make the .tflite files with `raydet quantize RUN`"
    )
    with pytest.raises(UserFileNotFoundError, match="run folder .*/nope does not exist"):
        require_models(tmp_path / "nope", ("float",))


def test_a_run_of_another_model_is_refused_before_loading(tmp_path):
    """A RUN of the old single-box raydet: its config.json names no backbone, its model.keras has the outputs
    class_logits and boxes; each is refused naming the file."""
    run = H.write_old_run(tmp_path / "old")
    with pytest.raises(UserError, match=r"old/config.json: 'model' must be an object naming its backbone"):
        check_run(run)
    with pytest.raises(UserError, match=r"model.keras has outputs \['boxes', 'class_logits'\]: not a raydet model"):
        check_model_file(run / "model.keras")


def test_model_runner_gives_the_hand_set_maps(tmp_path):
    """The hand-set model.keras: a red object of strength 5 and size 2 at cell (1, 2) (r = 1, b = 0) scores
    sigmoid(12 - 6) = 0.99753 as red and sigmoid(-12 - 6) = 1.5e-8 as blue there; black cells score sigmoid(-6) =
    0.00247 for both; the box channels there are [0.5, 0.5, g, g] with g = 2 / 5."""
    run = H.write_run(tmp_path / "run", int8=False)
    runner = ModelRunner(run / "model.keras")
    assert (runner.image_size, runner.grid, runner.num_classes) == (32, 8, 2)
    scenes = np.stack([H.paint([H.Obj(1, 2, 0, 5, 2)]), H.paint([])])
    maps, seconds = runner.predict(scenes)
    assert maps["heatmap"].shape == (2, 8, 8, 2) and maps["boxes"].shape == (2, 8, 8, 4) and seconds.shape == (2,)
    np.testing.assert_allclose(maps["heatmap"][0, 2, 1], [0.99753, 1.5e-8], atol=1e-5)  # [n, y, x, class]
    np.testing.assert_allclose(maps["heatmap"][1], 0.00247, atol=1e-4)
    np.testing.assert_allclose(maps["boxes"][0, 2, 1], [0.5, 0.5, 0.4, 0.4], atol=1e-5)
    empty, _ = runner.predict(scenes[:0])
    assert empty["heatmap"].shape == (0, 8, 8, 2)
    with pytest.raises(ValueError, match=r"takes \(N, 32, 32, 3\) images, got \(1, 16, 16, 3\)"):
        runner.predict(np.zeros((1, 16, 16, 3), np.uint8))


def test_batch_plan_sizes_calls_by_pixels_and_keeps_every_actor_busy():
    # 64 px: 24 MiB / (64 * 64 * 3) = 2048 -> capped at 512; 24,000 images -> ceil(24000 / 512) = 47 calls
    assert batch_plan(24_000, 64, 2) == (47, 511)  # 47 blocks of ceil(24000 / 47) = 511 rows
    # 224 px: 25,165,824 // 150,528 = 167 per call; 600 images -> 4 calls of 150
    assert batch_plan(600, 224, 2) == (4, 150)
    # 600 test images at 64 px would be 2 calls of 512: raised to 2 per actor so neither of 2 actors idles
    assert batch_plan(600, 64, 2) == (4, 150)
    # an explicit --batch-size wins; fewer rows than 2 per actor -> one row per block
    assert batch_plan(100, 64, 1, batch_size=30) == (4, 25)
    assert batch_plan(3, 64, 2) == (3, 1)
    # huge images: never fewer than 16 per call
    assert batch_plan(1000, 2048, 1) == (63, 16)
