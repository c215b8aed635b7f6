import dataclasses

import pytest

from raydet import config as C
from raydet.errors import UserError


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: C.PrepareConfig(data="d", out="o", image_size=0), "--image-size must be positive, got 0"),
        (lambda: C.PrepareConfig(data="d", out="o", test_fraction=1.5), "--test-fraction .* got 1.5"),
        (lambda: C.TrainConfig(prep="p", out="o", name="n", workers=-1), "--workers must be positive, got -1"),
        (lambda: C.TrainConfig(prep="p", out="o", name="n", workers=4, batch_size=2), "--batch-size 2 .* --workers 4"),
        (lambda: C.TrainConfig(prep="p", out="o", name="a/b"), "'a/b'"),
        (lambda: C.QuantizeConfig(run="r", modes=("int4",)), "int4"),
        (lambda: C.EvaluateConfig(run="r", data="d", models=("float", "fp8")), "fp8"),
        (lambda: C.SynthConfig(out="o", classes=9), "got 9"),
        (lambda: C.SynthConfig(out="o", object_size=(0.8, 0.3)), "--object-size .* got 0.8,0.3"),
        (lambda: C.TrainConfig(prep="p", out="o", name="n", warmup_epochs=-1), "--warmup-epochs .* got -1"),
        (lambda: C.TrainConfig(prep="p", out="o", name="n", ema_decay=1.0), "--ema .* got 1.0"),
        (lambda: C.TrainConfig(prep="p", out="o", name="n", checkpoint_every=0), "--checkpoint-every .* got 0"),
        (lambda: C.TrainConfig(prep="p", out="o", name="n", warmup_epochs=float("nan")), "--warmup-epochs .* got nan"),
        (lambda: C.ModelConfig(num_classes=2, image_size=48, depth=5), "image size 48 must be a multiple of 32"),
    ],
)
def test_bad_values_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_model_and_augment_configs_come_back_whole_from_config_json():
    """RUN/config.json holds asdict(ModelConfig) and the TrainConfig's augmentation; the Ray Train workers and the
    QAT export rebuild them with ModelConfig(**...) / AugmentConfig(**...): the same configs, checks included."""
    import json

    model = C.ModelConfig(num_classes=3, image_size=96, backbone="efficientnet_lite1", width=8, max_width=64, depth=3)
    augment = C.AugmentConfig(hflip=0.25, vflip=0.5, rot90=0.5, scale=0.3, mosaic=0.0, min_box_px=1.5)
    train = C.TrainConfig(prep="p", out="o", name="n", augmentation=augment)
    on_disk = json.loads(json.dumps({"model": dataclasses.asdict(model), "train": dataclasses.asdict(train)}))
    assert C.ModelConfig(**on_disk["model"]) == model
    assert C.AugmentConfig(**on_disk["train"]["augmentation"]) == augment
    on_disk["model"]["depth"] = 2  # an edited config.json is checked as a command line is
    with pytest.raises(UserError, match=r"depth must be at least 3 \(.*\), got 2"):
        C.ModelConfig(**on_disk["model"])


def test_a_class_with_a_comma_is_chosen_through_a_classes_file(tmp_path):
    from voc_xml import obj, xml

    from raydet import cli
    from raydet.ingest.voc import parse_voc

    path = tmp_path / "classes.txt"
    path.write_text("red, round\nblue\n")
    cfg = cli.config_from_args(cli.get_args_parser().parse_args(["prepare", "d", "--out", "o", "--classes", str(path)]))
    assert cfg.classes == ("red, round", "blue")
    rec = parse_voc(xml(obj("red, round") + obj("red") + obj("blue")), classes=cfg.classes)
    assert [o.name for o in rec.objects] == ["red, round", "blue"]
