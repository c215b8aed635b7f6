"""The Ray Serve application of ``raydet serve``: the :class:`Detector` deployment and its builder.

Each replica loads the model once (:class:`raydet.export.runner.ModelRunner`, a URI's model file fetched into the
replica's process as evaluate's actors fetch theirs) and answers ``POST /detect``, ``GET /health`` and
``GET /model`` (:mod:`raydet.serve.http` for the contract). A request is decoded in the replica with
:func:`raydet.ingest.images.decode_resize` (``raydet predict``'s decoder, limits included), then waits in a
``@serve.batch`` queue; one call of :func:`raydet.evaluate.predict.detect` (model, peak decode, boxes in the stored
image's pixels: ``raydet predict``'s own code) serves every request of a batch, so one request's detections are
``raydet predict``'s for the same file. Bad requests are answered 4xx with one line and the replica goes on.

``build`` is the application builder Serve imports: ``serve run raydet.serve.app:build run=RUN model=int8``, or
a Serve config file's ``import_path: raydet.serve.app:build`` with ``args:`` (serve.yaml), for ``serve deploy``.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from raydet.cluster import storage
from raydet.config import ServeConfig, parse_autoscale
from raydet.errors import UserError
from raydet.evaluate.predict import detect, draw_encoded, run_classes
from raydet.export.run import Run
from raydet.export.runner import ModelRunner, check_run, require_models
from raydet.ingest.images import ImageError, decode_resize
from raydet.report.draw import encode_png
from raydet.serve.http import HttpError, detect_options, image_bytes, image_error, read_body

# A replica takes up to this many requests at once (at least two batches' worth, so the next batch fills while
# one runs); more wait at the proxy. Serve's default of 5 would cap every batch at 5.
MIN_ONGOING_REQUESTS = 32
HEALTH_CHECK_PERIOD_S = 2.0  # a dead or stuck replica is found (and replaced) within seconds, not Serve's 10 s
CONSTRUCTOR_RETRIES = 2  # a model that does not load fails the deploy in a few tries, not Serve's 20


@serve.deployment(name="Detector")
class Detector:
    """One replica: ``cfg`` (ServeConfig), ``model_source`` (the model file's local path or URI) and ``classes``
    (the run's class names, label order) in; HTTP requests in, JSON or PNG out."""

    def __init__(self, cfg: ServeConfig, model_source: str, classes: list[str]):

        self.cfg, self.classes = cfg, list(classes)
        self.runner = ModelRunner(model_source, num_threads=cfg.threads)
        if self.runner.num_classes != len(self.classes):
            raise UserError(
                f"{self.runner.path.name} predicts {self.runner.num_classes} classes, the run's "
                f"config.json names {len(self.classes)}: {self.classes}"
            )
        size = self.runner.image_size
        self.runner.predict(np.zeros((1, size, size, 3), np.uint8))  # warm-up: no first request pays for it
        self._infer.set_max_batch_size(cfg.max_batch_size)
        self._infer.set_batch_wait_timeout_s(cfg.batch_wait_ms / 1000.0)
        self.info = {
            "run": storage.normalize(cfg.run),
            "model": cfg.model,
            "model_file": self.runner.path.name,
            "classes": self.classes,
            "image_size": size,
            "max_batch_size": cfg.max_batch_size,
            "batch_wait_ms": cfg.batch_wait_ms,
            "score_threshold": cfg.score_threshold,
            "max_bytes": cfg.max_bytes,
            "max_pixels": cfg.max_pixels,
            "threads": cfg.threads,
            "pid": os.getpid(),
        }

    async def __call__(self, request: Request) -> Response:
        """Route ``request``; an HttpError becomes its status and one line of text."""
        path = request.scope["path"]
        root = request.scope.get("root_path", "")
        path = (path[len(root) :] if root and path.startswith(root) else path).rstrip("/") or "/"
        routes = {"/detect": ("POST", self._detect), "/health": ("GET", self._health), "/model": ("GET", self._model)}
        try:
            if path not in routes:
                raise HttpError(404, f"no such path {path!r}: POST /detect, GET /health, GET /model")
            method, handler = routes[path]
            if request.method != method:
                raise HttpError(405, f"{path} takes {method}, not {request.method}")
            return await handler(request)
        except HttpError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=exc.status)

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _model(self, request: Request) -> Response:
        return JSONResponse(self.info)

    async def _detect(self, request: Request) -> Response:
        """One image -> its detections (JSON) or their drawing (PNG); module docstring."""

        # 1. options and bytes: refused before any decoding
        t0 = time.perf_counter()
        options = detect_options(request.query_params, self.cfg.score_threshold)
        body = await read_body(request.headers, request.stream(), self.cfg.max_bytes)
        data = image_bytes(request.headers.get("content-type"), body)
        # 2. predict's decoder, then the batch queue
        t1 = time.perf_counter()
        try:
            pixels, width, height = decode_resize(data, self.runner.image_size, max_pixels=self.cfg.max_pixels)
        except ImageError as exc:
            raise image_error(exc) from None
        t2 = time.perf_counter()
        detections, model_s, batch = await self._infer((pixels, (width, height), options.score_threshold))
        t3 = time.perf_counter()
        detections = detections[: options.max_detections]
        if options.draw:
            return Response(self._drawing(data, detections), media_type="image/png")
        timings = {
            "read_ms": t1 - t0,
            "decode_ms": t2 - t1,
            "batch_ms": t3 - t2,
            "model_ms": model_s,
            "total_ms": time.perf_counter() - t0,
        }
        return JSONResponse(
            {
                "model": self.cfg.model,
                "model_file": self.runner.path.name,
                "width": width,
                "height": height,
                "detections": detections,
                "batch_size": batch,
                "timings_ms": {k: round(v * 1000.0, 3) for k, v in timings.items()},
            }
        )

    def _drawing(self, data: bytes, detections: list[dict]) -> bytes:
        """PNG bytes of the image with ``detections`` drawn (raydet predict's drawing, at most MAX_DRAW_PIXELS)."""

        boxes = np.array([d["box"] for d in detections], np.float64).reshape(-1, 4)
        try:
            drawn = draw_encoded(
                data, boxes, [d["class"] for d in detections], [d["score"] for d in detections], self.cfg.max_pixels
            )
            return encode_png(drawn)
        except ImageError as exc:
            raise image_error(exc) from None
        except ValueError as exc:
            raise HttpError(422, f"the image cannot be drawn: {exc}") from None

    @serve.batch(max_batch_size=ServeConfig.max_batch_size, batch_wait_timeout_s=ServeConfig.batch_wait_ms / 1000.0)
    async def _infer(self, items: list[tuple[np.ndarray, tuple[int, int], float]]) -> list[tuple[list, float, int]]:
        """A batch of ``(pixels (S, S, 3) uint8, (width, height), score_threshold)`` -> per item ``(detections,
        model seconds, batch size)``: one :func:`raydet.evaluate.predict.detect` call for all of them."""

        pixels = np.stack([item[0] for item in items])
        detections, seconds = detect(
            self.runner, pixels, [item[1] for item in items], self.classes, [item[2] for item in items]
        )
        return [(dets, float(s), len(items)) for dets, s in zip(detections, seconds, strict=True)]


def deployment_options(cfg: ServeConfig) -> dict:
    """``Detector.options(...)`` for ``cfg``: replicas (fixed, or autoscaled between ``cfg.autoscale``), each
    reserving ``cfg.threads`` CPUs for its ``cfg.threads`` interpreter threads."""
    options = {
        "ray_actor_options": {"num_cpus": cfg.threads},
        "max_ongoing_requests": max(MIN_ONGOING_REQUESTS, 2 * cfg.max_batch_size),
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "max_constructor_retry_count": CONSTRUCTOR_RETRIES,
        "logging_config": {"enable_access_log": cfg.access_log},
    }
    if cfg.autoscale is None:
        return {**options, "num_replicas": cfg.replicas}
    low, high = cfg.autoscale
    # a replica is busy at about one batch in flight: more than that waiting per replica asks for another
    return {
        **options,
        "num_replicas": "auto",
        "autoscaling_config": {
            "min_replicas": low,
            "initial_replicas": max(low, 1),
            "max_replicas": high,
            "target_ongoing_requests": cfg.max_batch_size,
        },
    }


def check_model(cfg: ServeConfig) -> tuple[str, list[str]]:
    """Refuse a missing model, a file that is not a raydet model or a run without class names before any replica
    starts -> (the model file's location for the replicas: a local path, or for a RUN URI the file's URI, which each
    replica fetches itself; the class names)."""

    with storage.local_copy(cfg.run, fetch=[Run.CONFIG, Run.model_name(cfg.model)]) as run:
        path = require_models(run, (cfg.model,))[cfg.model]
        check_run(run, (cfg.model,))
        classes = run_classes(run)
    return (storage.join(cfg.run, path.name) if storage.is_uri(cfg.run) else str(path)), classes


def application(cfg: ServeConfig) -> serve.Application:
    """The Serve application for ``cfg`` (the model checked first, :func:`check_model`)."""
    source, classes = check_model(cfg)
    return Detector.options(**deployment_options(cfg)).bind(cfg, source, classes)


def config_from_args(args: dict) -> ServeConfig:
    """A builder's ``args`` (a Serve config file's ``args:``, or ``key=value`` strings of ``serve run``) ->
    ServeConfig. Keys are ServeConfig's fields (``autoscale`` as ``MIN..MAX``); UserError naming an unknown key
    or a bad value."""
    # address and detach belong to the raydet serve command, not to an application Serve deploys
    allowed = [f.name for f in dataclasses.fields(ServeConfig) if f.name not in ("address", "detach")]
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise UserError(
            f"unknown raydet.serve.app:build argument(s) {', '.join(unknown)}: expected {', '.join(allowed)}"
        )
    values = {}
    for name, value in args.items():
        kind = type(getattr(ServeConfig, name, "")) if name != "run" else str
        if name == "autoscale":
            values[name] = parse_autoscale(str(value)) if value is not None else None
        elif kind is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0"):
                raise UserError(f"{name} must be true or false, got {value!r}")
            values[name] = value.lower() in ("true", "1")
        elif isinstance(value, str) and kind in (int, float):
            try:
                values[name] = kind(value)
            except ValueError:
                raise UserError(f"{name} must be a number, got {value!r}") from None
        else:
            values[name] = value
    if "run" not in values:
        raise UserError("raydet.serve.app:build needs the argument run (a RUN folder or URI)")
    return ServeConfig(**values)


def build(args: dict) -> serve.Application:
    """Serve's application builder (``import_path: raydet.serve.app:build``): ``args`` -> the application
    (:func:`config_from_args`, :func:`application`)."""
    return application(config_from_args(args))
