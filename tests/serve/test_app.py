"""raydet.serve.app: the builder's arguments, the model check (a RUN in a bucket too), serve.yaml, a batch of mixed
thresholds, and (slow) a real Serve application on 127.0.0.1 over real HTTP with the hand-set detector
(tests/handset.py): detections and drawings equal to ``raydet predict``'s, each bad request refused with its 4xx
while the next good one succeeds, /health and /model, batching, and a replica killed under load."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import handset as H
import numpy as np
import pytest
import yaml
from image_bytes import png_header_only
from PIL import Image
from serve_client import Client, free_port, multipart, png

from raydet.config import PredictConfig, ServeConfig
from raydet.errors import UserError

REPO = Path(__file__).resolve().parents[2]
A, B, C = H.Obj(1, 1, 0, 5, 1), H.Obj(5, 2, 1, 4, 2), H.Obj(2, 5, 0, 3, 2)
MAX_BYTES = 300_000  # the test app's byte limit: small, so an over-limit body is cheap to send


def test_a_batch_of_mixed_thresholds_answers_each_image_as_if_alone():
    """raydet.evaluate.predict.detect with one threshold per image (a Serve batch of requests asking different ones)
    gives each image what it would get alone: decoded once at the lowest threshold, then cut per image."""
    from raydet.evaluate.predict import detect

    scenes = [H.paint([A, B, C]), H.paint([A, B, C]), H.paint([C])]  # scores 0.9975, 0.9734, 0.7685

    class Runner:  # the hand-set model's maps, computed by its tf_keras model
        model = H.build_model()

        def predict(self, images):
            out = self.model.predict_on_batch(images.astype(np.float32))
            return {k: np.asarray(v) for k, v in out.items()}, np.zeros(len(images))

    sizes = [(32, 32), (64, 32), (32, 32)]
    together, _ = detect(Runner(), np.stack(scenes), sizes, H.CLASSES, [0.98, 0.3, 0.8])
    alone = [
        detect(Runner(), scene[None], [size], H.CLASSES, t)[0][0]
        for scene, size, t in zip(scenes, sizes, [0.98, 0.3, 0.8], strict=True)
    ]
    assert together == alone
    assert [len(d) for d in together] == [1, 3, 0]  # A only; A, B, C; C's 0.77 < 0.8


def test_builder_args_from_a_config_file_or_strings(tmp_path):
    from raydet.serve.app import config_from_args, deployment_options

    cfg = config_from_args(
        {"run": "r", "replicas": "2", "max_batch_size": 8, "batch_wait_ms": "2.5", "access_log": "true"}
    )
    assert (cfg.replicas, cfg.max_batch_size, cfg.batch_wait_ms, cfg.access_log) == (2, 8, 2.5, True)
    assert config_from_args({"run": "r", "access_log": False}).access_log is False
    assert deployment_options(cfg)["num_replicas"] == 2
    auto = deployment_options(config_from_args({"run": "r", "autoscale": "1..4"}))
    assert auto["num_replicas"] == "auto" and auto["autoscaling_config"]["max_replicas"] == 4
    with pytest.raises(UserError, match="unknown raydet.serve.app:build argument.s. replica"):
        config_from_args({"run": "r", "replica": 2})
    with pytest.raises(UserError, match="needs the argument run"):
        config_from_args({"model": "int8"})
    with pytest.raises(UserError, match="--model must be one of"):
        config_from_args({"run": "r", "model": "int4"})


def test_a_bucket_run_is_checked_and_each_replica_fetches_its_model_from_the_bucket(s3_bucket, tmp_path):
    """RUN in a bucket: check_model reads config.json and the model from there and hands the replicas the model
    file's URI; the replica's ModelRunner fetches it (as evaluate's actors do) and predicts what the local file
    predicts."""
    from raydet.cluster import storage
    from raydet.export.runner import ModelRunner
    from raydet.serve.app import check_model

    local = H.write_run(tmp_path / "run")
    run = s3_bucket + "/runs/main"
    storage.upload(local, run, ["config.json", "model_int8.tflite"])
    source, classes = check_model(ServeConfig(run=run, model="int8"))
    assert (source, classes) == (run + "/model_int8.tflite", H.CLASSES)
    remote = ModelRunner(source)
    assert remote.path != local / "model_int8.tflite" and remote.path.is_file()
    scene = H.paint([A, B])[None]
    np.testing.assert_array_equal(
        remote.predict(scene)[0]["heatmap"], ModelRunner(local / "model_int8.tflite").predict(scene)[0]["heatmap"]
    )
    with pytest.raises(UserError, match="model.s. float16 not found"):
        check_model(ServeConfig(run=run, model="float16"))


def test_serve_yaml_is_a_serve_deploy_config_whose_args_build(tmp_path):
    """serve.yaml passes Serve's own schema (what `serve deploy` checks) and its args build the application."""
    from ray.serve.schema import ServeDeploySchema

    from raydet.serve.app import build

    doc = yaml.safe_load((REPO / "serve.yaml").read_text())
    schema = (
        ServeDeploySchema.model_validate(doc)
        if hasattr(ServeDeploySchema, "model_validate")
        else ServeDeploySchema.parse_obj(doc)
    )
    (app,) = schema.applications
    assert app.import_path == "raydet.serve.app:build"
    run = H.write_run(tmp_path / "run")
    built = build(dict(app.args, run=str(run)))
    assert type(built).__name__ == "Application"


# ---------------------------------------------------------------------------------------------- a real app


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The hand-set run served by a real Serve application (int8, 1 replica, batches of up to 8) on a free port
    of 127.0.0.1 -> (Client, run folder). A local Ray of 2 CPUs, shut down at the end."""
    import ray
    from ray import serve

    from raydet.cluster.runtime import runtime_env
    from raydet.serve.app import application

    run = H.write_run(tmp_path_factory.mktemp("serve") / "run")
    port = free_port()
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=runtime_env())
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        application(ServeConfig(run=str(run), model="int8", max_batch_size=8, max_bytes=MAX_BYTES)),
        name="raydet-test",
        route_prefix="/",
    )
    yield Client(port), run
    serve.shutdown()
    if started:
        ray.shutdown()


def _inputs(folder: Path) -> dict[str, bytes]:
    """Images to send: the 32 px scene (PNG), a 64 x 32 one (boxes scaled per axis), a JPEG photo-like one of
    another size (libjpeg-turbo's path), one with nothing in it."""
    folder.mkdir(parents=True, exist_ok=True)
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[8:12, 40:48] = (255, 102, 0)
    big = np.kron(H.paint([A, B, C]), np.ones((5, 4, 1), np.uint8))  # 160 x 128
    files = {"scene.png": png(H.paint([A, B, C])), "wide.png": png(wide), "empty.png": png(H.paint([]))}
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "JPEG", quality=95)
    files["big.jpg"] = buf.getvalue()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


@pytest.mark.slow
def test_detections_and_drawings_equal_raydet_predicts(served, tmp_path):
    from raydet.evaluate.predict import predict

    client, run = served
    files = _inputs(tmp_path / "in")
    report = predict(
        PredictConfig(run=str(run), paths=(str(tmp_path / "in"),), out=str(tmp_path / "out"), model="int8")
    )
    by_file = {Path(img["file"]).name: img for img in report["images"]}
    assert set(by_file) == set(files)
    assert len(by_file["scene.png"]["detections"]) == 3 and by_file["empty.png"]["detections"] == []
    for name, data in files.items():
        status, kind, body = client.detect(data)
        assert status == 200 and kind == "application/json", body
        answer = json.loads(body)
        assert answer["detections"] == by_file[name]["detections"], name  # same floats, same order
        assert (answer["width"], answer["height"]) == (by_file[name]["width"], by_file[name]["height"])
        assert answer["model"] == "int8" and answer["model_file"] == "model_int8.tflite"
        assert set(answer["timings_ms"]) == {"read_ms", "decode_ms", "batch_ms", "model_ms", "total_ms"}
        # ?draw=1: the PNG predict wrote for it, pixel for pixel
        status, kind, drawn_png = client.detect(data, "?draw=1")
        assert status == 200 and kind == "image/png"
        drawn = np.asarray(Image.open(io.BytesIO(drawn_png)))
        on_disk = np.asarray(Image.open(tmp_path / "out" / by_file[name]["output"]))
        np.testing.assert_array_equal(drawn, on_disk)
    # multipart carries the same image to the same answer; query options cut it
    form_type, form = multipart(("image", "scene.png", files["scene.png"]))
    status, _, body = client.detect(form, "", form_type)
    assert status == 200 and json.loads(body)["detections"] == by_file["scene.png"]["detections"]
    status, _, body = client.detect(files["scene.png"], "?score_threshold=0.9&max_detections=1")
    assert json.loads(body)["detections"] == by_file["scene.png"]["detections"][:1]  # 0.996 only
    status, _, body = client.detect(files["scene.png"], "?score_threshold=0.9")
    assert [d["score"] for d in json.loads(body)["detections"]] == [
        d["score"] for d in by_file["scene.png"]["detections"] if d["score"] >= 0.9
    ]  # A and B, not C (0.77)


def _bad_requests() -> list[tuple[str, bytes, str, str, int, str]]:
    """(what, body, query, content type, status, text in the answer) of each refused request."""
    buf = io.BytesIO()
    Image.new("RGB", (12, 10)).save(buf, "PPM")
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)).save(jpeg, "JPEG")
    over = np.random.default_rng(1).integers(0, 255, (400, 400, 3), np.uint8)  # ~480 KB as PNG > MAX_BYTES
    good = png(H.paint([A]))
    two_type, two = multipart(("a", "a.png", good), ("b", "b.png", good))
    ct = "application/octet-stream"
    return [
        ("empty body", b"", "", ct, 400, "empty body"),
        ("not an image", b"this is a text file\n", "", ct, 415, "not a recognised image"),
        ("a format raydet does not read", buf.getvalue(), "", ct, 415, "format PPM not accepted"),
        ("over the byte limit", png(over), "", ct, 413, f"over the limit of {MAX_BYTES:,} bytes"),
        (
            "a decompression bomb",
            png_header_only(12_000, 12_000),
            "",
            ct,
            413,  # 144 MP: over 100 MP
            "decompression bomb refused: the PNG header says 12000 x 12000",
        ),
        ("a truncated JPEG", jpeg.getvalue()[:3000], "", ct, 400, "truncated"),
        ("a bad query option", good, "?score_threshold=2", ct, 400, "score_threshold must be in [0, 1]"),
        ("two files in a form", two, "", two_type, 400, "holds 2 files"),
    ]


@pytest.mark.slow
def test_each_bad_request_gets_its_4xx_and_the_next_good_one_succeeds(served):
    client, _ = served
    good = png(H.paint([A, B, C]))
    status, _, body = client.detect(good)
    expected = json.loads(body)["detections"]
    assert status == 200 and len(expected) == 3
    for what, data, query, ctype, status_expected, text in _bad_requests():
        status, kind, body = client.detect(data, query, ctype)
        line = body.decode()
        assert status == status_expected, (what, status, line)
        assert kind.startswith("text/plain") and line.endswith("\n") and line.count("\n") == 1, (what, line)
        assert text in line, (what, line)
        status, _, body = client.detect(good)
        assert status == 200 and json.loads(body)["detections"] == expected, what
    # wrong method, wrong path
    assert client.request("GET", "/detect")[0] == 405
    assert client.request("GET", "/nope")[0] == 404


@pytest.mark.slow
@pytest.mark.parametrize("size", [(40_000, 1), (1, 40_000)])
def test_a_thin_image_is_answered_and_drawn_within_the_pixel_cap(served, size):
    from raydet.report.draw import MAX_DRAW_PIXELS

    client, _ = served
    data = png(np.full((size[1], size[0], 3), 90, np.uint8))
    status, _, body = client.detect(data)
    assert status == 200 and (json.loads(body)["width"], json.loads(body)["height"]) == size
    status, kind, drawn_png = client.detect(data, "?draw=1")
    assert status == 200 and kind == "image/png"
    w, h = Image.open(io.BytesIO(drawn_png)).size
    assert w * h <= MAX_DRAW_PIXELS
    assert client.request("GET", "/health")[0] == 200


@pytest.mark.slow
def test_health_and_model(served):
    client, run = served
    status, _, body = client.request("GET", "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, _, body = client.request("GET", "/model")
    info = json.loads(body)
    assert status == 200
    assert (info["classes"], info["image_size"], info["model"], info["model_file"], info["run"]) == (
        H.CLASSES,
        H.SIZE,
        "int8",
        "model_int8.tflite",
        str(run),
    )
    assert info["max_batch_size"] == 8 and info["max_bytes"] == MAX_BYTES


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(served):
    """16 clients at once, each with its own scene: answers come back to the right client, in batches > 1."""
    from concurrent.futures import ThreadPoolExecutor

    client, _ = served
    scenes = [[H.Obj(i % 8, i // 8, i % 2, 5, 1 + i % 5)] for i in range(16)]

    def one(scene):
        status, _, body = client.detect(png(H.paint(scene)))
        return status, json.loads(body)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, scenes))
    for scene, (status, answer) in zip(scenes, answers, strict=True):
        (det,) = answer["detections"]
        assert status == 200 and det["label"] == scene[0].label
        np.testing.assert_allclose(det["box"], H.box(scene[0]) * 32, atol=0.5)
    assert max(a["batch_size"] for _, a in answers) > 1


@pytest.mark.slow
def test_a_replica_killed_under_load_is_replaced_and_no_answer_is_wrong(served):
    """A second application (1 replica, under /kill) of the same Serve: 8 clients send scenes with one known
    object each while its replica is killed. Every 200 holds that client's object; every failure is a 5xx that
    the client sees; the replica is replaced and answers again."""
    import threading

    import ray
    from ray import serve

    from raydet.serve.app import application

    client, run = served
    serve.run(
        application(ServeConfig(run=str(run), model="int8", max_batch_size=8)), name="raydet-kill", route_prefix="/kill"
    )
    results, stop = [], threading.Event()

    def load(i: int) -> None:
        scene = [H.Obj(i % 8, i // 8, i % 2, 5, 1 + i % 5)]
        data = png(H.paint(scene))
        while not stop.is_set():
            try:
                status, _, body = client.request("POST", "/kill/detect", data)
            except OSError as exc:  # a dropped connection is a failure the client sees too
                results.append((time.monotonic(), scene, None, str(exc)))
                continue
            results.append((time.monotonic(), scene, status, body))

    threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        (name,) = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::raydet-kill#")
        ]
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        killed = time.monotonic()
        deadline = killed + 120  # the replacement took 13 s alone, once 60 s late in a full suite run
        while not [r for r in results if r[0] > killed + 1 and r[2] == 200] and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join()
        serve.delete("raydet-kill")
    ok = [r for r in results if r[2] == 200]
    failed = [r for r in results if r[2] != 200]
    for _, scene, _, body in ok:
        (det,) = json.loads(body)["detections"]
        assert det["label"] == scene[0].label
        np.testing.assert_allclose(det["box"], H.box(scene[0]) * 32, atol=0.5)
    assert all(r[2] is None or r[2] >= 500 for r in failed), {r[2] for r in failed}
    assert [r for r in ok if r[0] > killed + 1], "no answer after the replica was killed: it was not replaced"
    assert len([r for r in ok if r[0] < killed]) > 8
