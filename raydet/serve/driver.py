"""``raydet serve RUN``: deploy :mod:`raydet.serve.app` on a local Ray or a cluster and keep it until Ctrl-C.

Everything that can be refused is refused before Ray starts: the config (raydet.config.ServeConfig), the model
file and the run's class names (:func:`raydet.serve.app.check_model`), a local port already taken, ``--detach``
without a cluster. On a local Ray (started here) Ctrl-C shuts Serve and Ray down; on a cluster (``--address`` or
``RAY_ADDRESS``) it deletes the application, or with ``--detach`` the command returns at once and the
application keeps serving (``serve shutdown`` or ``serve delete raydet`` ends it). (``serve.shutdown()`` on the
local Ray is left out: stopping Ray ends Serve too, without the controller's retried-task warnings.)
"""

from __future__ import annotations

import os
import socket
import time

from ray import serve as ray_serve

from raydet.cluster.runtime import init_ray
from raydet.config import ServeConfig
from raydet.errors import UserError
from raydet.serve.app import application

APP_NAME = "raydet"


def on_cluster(cfg: ServeConfig) -> bool:
    """Whether ``cfg`` names an existing Ray cluster (``--address`` or ``RAY_ADDRESS``) rather than a local Ray."""
    return bool(cfg.address or os.environ.get("RAY_ADDRESS"))


def check_port(host: str, port: int) -> None:
    """UserError naming ``host:port`` when this machine cannot listen there (taken, or not an address of it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (--port, --host)") from None


def serve(cfg: ServeConfig) -> dict:
    """Deploy ``cfg`` and keep it until Ctrl-C (or return at once with ``cfg.detach``) -> ``{"url", "replicas",
    "model", "run"}``."""

    # 1. refusals first
    cluster = on_cluster(cfg)
    if cfg.detach and not cluster:
        raise UserError("--detach needs a cluster (--address or RAY_ADDRESS): a local Ray ends with this command")
    app = application(cfg)
    if not cluster:
        check_port(cfg.host, cfg.port)

    # 2. Ray, Serve's proxy on host:port, the replicas (serve.run returns once they answer)
    init_ray(cfg.address)
    start = time.perf_counter()
    ray_serve.start(http_options={"host": cfg.host, "port": cfg.port})
    ray_serve.run(app, name=APP_NAME, route_prefix="/")
    info = _describe(cfg, f"http://{cfg.host}:{cfg.port}", time.perf_counter() - start)
    if cfg.detach:
        print(
            f"serve: deployed as application {APP_NAME!r}; `serve shutdown` or `serve delete {APP_NAME}` stops it",
            flush=True,
        )
        return info

    # 3. until Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("serve: stopping (Ctrl-C)", flush=True)
    finally:
        if cluster:  # a local Ray goes whole when the command ends (raydet.cli), Serve with it
            ray_serve.delete(APP_NAME)
    return info


def _describe(cfg: ServeConfig, url: str, seconds: float) -> dict:
    """Print where the application answers and how it runs -> ``{"url", "replicas", **cfg's model}``."""
    replicas = f"{cfg.autoscale[0]}..{cfg.autoscale[1]} (autoscaled)" if cfg.autoscale else str(cfg.replicas)
    print(
        f"serve: {cfg.model} of {cfg.run}, {replicas} replica(s) x {cfg.threads} thread(s), batches of up to "
        f"{cfg.max_batch_size} (wait {cfg.batch_wait_ms:g} ms); up in {seconds:.1f} s",
        flush=True,
    )
    print(
        f"serve: POST {url}/detect (image body or multipart; ?score_threshold=, ?max_detections=, ?draw=1), "
        f"GET {url}/health, GET {url}/model; Ctrl-C stops",
        flush=True,
    )
    return {"url": url, "replicas": replicas, "model": cfg.model, "run": cfg.run}
