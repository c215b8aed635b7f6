"""Connecting to Ray, the same way for every command.

- ``address`` given: connect to that cluster (``auto``, ``ray://host:10001`` or ``host:6379``).
- ``RAY_ADDRESS`` set (as inside ``ray job submit``): connect to it.
- otherwise: start a fresh local Ray. ``address="local"`` ignores a stale ``ray_current_cluster`` file
  left by an earlier ``ray start`` (docs/STACK.md). It has no dashboard unless ``RAYDET_DASHBOARD=1``.

Either way Ray Data draws no progress bars unless ``RAYDET_VERBOSE=1`` (raydet.cluster.console: the quiet console).

Every worker must import TensorFlow with ``TF_USE_LEGACY_KERAS=1`` (Keras 3 breaks two-worker ``fit``). The
driver sets it for itself before TF loads; a local Ray started here inherits it from the driver's environment,
and on an existing cluster it travels in the runtime environment.

On an existing cluster the code travels too: ``ray.init`` gets ``py_modules=[<this raydet's folder>]``, so Ray
zips the package (without ``__pycache__``: ~0.45 MB, the .py files stored uncompressed), uploads it once per
content hash and puts it first on every worker's ``sys.path``. Workers then run the driver's raydet even where none (or
another version) is installed. Tasks, actors and Ray Train workers inherit it from the job: a child's runtime env that
names other fields (``runtime_env()``: env_vars only) keeps the job's ``py_modules``.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from raydet.cluster import heavy
from raydet.cluster.console import verbose

LEGACY_KERAS_ENV = {"TF_USE_LEGACY_KERAS": "1"}
DASHBOARD_ENV = "RAYDET_DASHBOARD"
# Left out of the uploaded package (gitwildmatch patterns, relative to the package folder): bytecode of the
# driver's Python, which workers neither need nor may share, and build metadata.
PACKAGE_EXCLUDES = ["__pycache__/", "*.pyc", "*.egg-info/"]


def use_legacy_keras() -> None:
    """Make this process's later ``import tensorflow`` use tf-keras (Keras 2). Call before TF is imported."""
    os.environ.update(LEGACY_KERAS_ENV)


def runtime_env() -> dict:
    """The runtime environment every raydet task, actor and Train worker runs in (env_vars only).

    The code is not in it: it travels once, at the job level (``driver_runtime_env``), and every task, actor and
    Train worker inherits it. A ``py_modules`` here would make the Ray Train controller, which creates the
    workers from some node of the cluster, upload this driver's local folder again from there.
    """
    return {"env_vars": dict(LEGACY_KERAS_ENV)}


def job_runtime_env() -> dict:
    """The runtime environment of the ``ray job submit`` that started this driver; {} outside a job.

    The job supervisor hands it to the driver in ``RAY_JOB_CONFIG_JSON_ENV_VAR`` (Ray 2.60).
    """
    text = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    return (json.loads(text).get("runtime_env") or {}) if text else {}


def package_dir() -> Path:
    """The folder of the raydet package this process imported (what ``py_modules`` uploads)."""
    import raydet

    return Path(raydet.__file__).resolve().parent


def code_runtime_env() -> dict:
    """The fields that ship this raydet to a cluster: ``py_modules`` (a local folder path; a path, not the module
    object, so that the dict stays JSON, as Ray Client and the job API need) and its ``excludes``."""
    return {"py_modules": [str(package_dir())], "excludes": list(PACKAGE_EXCLUDES)}


def job_ships_raydet(job: dict) -> bool:
    """Whether the job's runtime env ``job`` already carries raydet to the workers.

    True if it sets ``py_modules`` (Ray would refuse a second one; the user chose what goes) or a ``working_dir``
    that the raydet this driver imported came from (``ray job submit --working-dir .`` from the repository: the
    driver runs in the unpacked working dir, and so does every worker).
    """
    if job.get("py_modules"):
        return True
    return bool(job.get("working_dir")) and Path.cwd().resolve() in package_dir().parents


def driver_runtime_env() -> dict:
    """What this driver passes to ``ray.init`` on an existing cluster: ``runtime_env()`` and
    ``code_runtime_env()``, minus what the job already sets.

    Inside a job Ray merges the job's runtime env with ``ray.init``'s, but refuses (ValueError) any field or
    env var that both name, even with the same value, so a job submitted with ``--runtime-env
    jobs/runtime_env.yaml`` (which sets TF_USE_LEGACY_KERAS) would fail if we repeated it. A job that set the
    variable to another value keeps its own: the user asked for it. The same goes for the code: nothing is added
    when the job ships raydet itself (``job_ships_raydet``), and a job's own ``excludes`` (which then also
    apply to our upload) are not repeated.
    """
    job = job_runtime_env()
    env_vars = {k: v for k, v in runtime_env()["env_vars"].items() if k not in (job.get("env_vars") or {})}
    env = {"env_vars": env_vars} if env_vars else {}
    if not job_ships_raydet(job):
        env.update({k: v for k, v in code_runtime_env().items() if k not in job})
    return env


def init_ray(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    """Connect to (or start) Ray once per process; later calls are no-ops. ``log_to_driver`` False: workers'
    output stays in Ray's log files (``raydet tune``, whose trials' epoch lines would interleave)."""
    ray = heavy.ray()
    use_legacy_keras()
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        # The cluster may have no raydet, or another version: driver_runtime_env() ships this one.
        ray.init(address=address, runtime_env=driver_runtime_env() or None, log_to_driver=log_to_driver)
    else:
        # No runtime_env here: the local Ray's processes inherit this one's environment, which
        # use_legacy_keras() just set; a job runtime_env would make Ray start fresh workers for it and throw
        # away the ones it prestarted. No dashboard unless asked for (RAYDET_DASHBOARD=1): it lives only as long
        # as this command. docs/INGEST.md ("The local Ray") has what each would cost.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard_wanted(), log_to_driver=log_to_driver)
    quiet_ray_data()


def quiet_ray_data() -> None:
    """Ray Data's progress bars off in this driver unless ``RAYDET_VERBOSE=1``: raydet draws one line for its
    own long passes (raydet.cluster.progress), and Ray Data's redraws (or, off a terminal, its progress log every few
    seconds) covered every internal step (reads, repartitions, column selections)."""

    if not verbose():
        heavy.data_context().get_current().enable_progress_bars = False


def dashboard_wanted() -> bool:
    """Whether a local Ray started by raydet gets Ray's dashboard: ``RAYDET_DASHBOARD=1`` (or true/yes)."""
    return os.environ.get(DASHBOARD_ENV, "").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def data_uses_every_cpu():
    """Within the block, Ray Data's task-pool operators may use every CPU the cluster has: Ray Data's
    per-operator resource reservation (``DataContext.op_resource_reservation_enabled``) is off, and the block
    yields the ``DataContext``. On exit the setting is restored, so other Ray Data work in this process keeps Ray's
    defaults. For a single map stage, such as raydet's ingestion, the reservation (which keeps one operator of a
    multi-stage pipeline from starving another) only holds tasks back; docs/INGEST.md has the measurements.
    """
    ctx = heavy.data_context().get_current()
    before = ctx.op_resource_reservation_enabled
    ctx.op_resource_reservation_enabled = False
    try:
        yield ctx
    finally:
        ctx.op_resource_reservation_enabled = before
