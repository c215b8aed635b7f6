"""raydet.export.run.Run: a RUN's file names, its config.json read and checked in one place, its history."""

from __future__ import annotations

import json

import pytest

from raydet.errors import UserError
from raydet.export.run import KNOWN_MODELS, Run


def test_every_model_name_has_one_file_name():
    names = {name: Run.model_name(name) for name in KNOWN_MODELS}
    assert names["float"] == "model.keras" and names["int8"] == "model_int8.tflite"
    assert len(set(names.values())) == len(names)
    assert Run.QAT_MODEL == "model_qat.keras" and Run.QAT_MODEL not in names.values()  # its export is model_qat.tflite


def test_file_is_a_path_or_uri_and_local_keeps_the_folder(tmp_path):
    assert Run("s3://bucket/runs/a/").file(Run.CONFIG) == "s3://bucket/runs/a/config.json"
    assert Run(tmp_path).file(Run.HISTORY) == str(tmp_path / "history.jsonl")
    assert Run(tmp_path).local(Run.CURVES) == tmp_path / "curves.png"


def test_read_config_checks_each_field_naming_the_file(tmp_path):
    run = Run(tmp_path)
    assert run.read_config(missing_ok=True) == {}
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        run.read_config()
    config = tmp_path / "config.json"
    good = {"classes": ["cat"], "image_size": 64, "model": {"backbone": "cnn"}, "train": {}, "prep": "p"}
    config.write_text(json.dumps(good))
    assert run.read_config(need=("classes", "model")) == good
    for field, bad, said in [
        ("classes", [], r"'classes' must be a non-empty list of names, got \[\]"),
        ("image_size", "64", "'image_size' must be a positive integer, got '64'"),
        ("model", {"width": 8}, r"'model' must be an object naming its backbone, got \{'width': 8\}"),
        ("train", 3, "'train' must be an object, got 3"),
    ]:
        config.write_text(json.dumps(good | {field: bad}))
        with pytest.raises(UserError, match=f"{config}: {said}"):
            run.read_config()
    config.write_text(json.dumps({"image_size": 64}))
    with pytest.raises(UserError, match=r"config.json: no 'classes' \(fields: image_size\)"):
        run.read_config(need=("classes",))
    config.write_text("{not json")
    with pytest.raises(UserError, match="config.json: not valid JSON"):
        run.read_config(missing_ok=True)


def test_read_history_skips_blank_lines(tmp_path):
    assert Run(tmp_path).read_history() == []
    (tmp_path / "history.jsonl").write_text('{"epoch": 1}\n\n{"epoch": 2}\n')
    assert [row["epoch"] for row in Run(tmp_path).read_history()] == [1, 2]
