import dataclasses

import pytest

from raydet import config as C


def test_class_list_parsing():
    assert C.parse_class_list(" cat, dog ") == ("cat", "dog")
    assert C.parse_class_list(None) is None


@pytest.mark.parametrize("text,match", [("a,,b", "'a,,b'"), ("", "''"), ("a,b,a", r"\['a'\]")])
def test_malformed_class_list_names_it(text, match):
    with pytest.raises(ValueError, match=match):
        C.parse_class_list(text)


@pytest.mark.parametrize("make,match", [
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
])
def test_bad_values_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_configs_are_frozen():
    cfg = C.SynthConfig(out="o")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.images = 5  # type: ignore[misc]
