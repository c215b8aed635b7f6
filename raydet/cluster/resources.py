"""The resources a stage needs: refused at once on a fixed cluster, asked of the autoscaler on one that grows.

A stage needs a list of *bundles*, ``{resource: amount}`` dicts that must each fit on one node (a Train worker's
``{"CPU": 1, "GPU": 1}``, an evaluation actor's ``{"CPU": 2}``). :func:`ensure_resources` returns once the nodes of
the cluster can hold them all:

1. they fit now: it returns at once;
2. no autoscaler (a laptop, a cluster started by hand): ValueError naming the numbers (Ray would wait forever);
3. an autoscaler (a ``ray up`` cluster, :func:`read_autoscaler`) whose node types can never hold them: ValueError
   at once, naming the node types and their limits;
4. otherwise it asks the autoscaler for the bundles (``ray.autoscaler.sdk.request_resources``), polls the nodes
   and prints a line now and then until they fit (returns) or ``timeout_s`` passes (ValueError naming what is
   still missing). The request is withdrawn either way (:func:`ensure_resources` says why).

Capacity means the nodes' *total* resources, not what is free this moment: the autoscaler sizes the cluster from
totals too, and work of other jobs holding a node only delays the stage, as Ray's own scheduler would.
docs/STACK.md has the facts about Ray 2.60 this relies on.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.autoscaler.sdk import request_resources

from raydet.errors import UserError

# Written on the head node by `ray up` (the filled-in cluster config, JSON); its monitor (the autoscaler) runs with
# `--autoscaling-config` pointing at it. Ray Tune's own "is this an autoscaling cluster" test reads the same file.
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
POLL_S = 5.0  # between two looks at the nodes: a node takes minutes to boot, so a look costs nothing
REPORT_EVERY_S = 30.0  # a line this often while waiting, so a long wait visibly progresses


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict  # what one node of this type has, e.g. {"CPU": 4, "GPU": 1}; {} when the config leaves it out
    max_nodes: float  # how many of it the autoscaler may run (math.inf: no limit given)


@dataclass(frozen=True)
class Autoscaler:
    """What an autoscaler can launch: ``node_types`` with ``max_nodes`` > 0 (None: unknown); ``max_nodes``:
    worker nodes of all types together (math.inf: no limit given); ``source``: where this was read."""

    node_types: tuple[NodeType, ...] | None
    max_nodes: float
    source: str


# ----------------------------------------------------------------------------------------------- finding it
def read_autoscaler(address: str | None, path: str | os.PathLike | None = None) -> Autoscaler | None:
    """The autoscaler of the cluster this driver uses, or None when there is none.

    ``address``: the stage's ``--address``. None (and no ``RAY_ADDRESS``) or "local" means
    raydet.cluster.runtime.init_ray started a Ray of its own, which no autoscaler manages whatever files lie around.
    Otherwise the autoscaling config at ``path`` (default :data:`BOOTSTRAP_CONFIG`) decides: present on the head of a
    ``ray up`` cluster, where ``ray job submit`` runs the driver; absent anywhere else.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address == "local":
        return None
    path = Path(path or BOOTSTRAP_CONFIG).expanduser()
    if not path.is_file():
        return None
    return autoscaler_from_config(json.loads(path.read_text()), str(path))


def autoscaler_from_config(config: dict, source: str) -> Autoscaler:
    """A cluster launcher config (``cluster.yaml``'s keys) -> the node types it may launch and its limits.

    Defaults as Ray fills them in: a worker type without ``max_workers`` may run the global ``max_workers``; the
    head type none beyond the head itself. Types that may run no node are left out.
    """
    total = config.get("max_workers")
    total = math.inf if total is None else float(total)
    types = config.get("available_node_types")
    if not types:
        return Autoscaler(node_types=None, max_nodes=total, source=source)
    head = config.get("head_node_type")
    node_types = []
    for name, spec in types.items():
        limit = spec.get("max_workers", 0 if name == head else total)
        if limit:
            node_types.append(NodeType(name, dict(spec.get("resources") or {}), float(limit)))
    return Autoscaler(node_types=tuple(node_types), max_nodes=total, source=source)


def alive_node_resources() -> list[dict]:
    """The total resources of each alive node of the connected Ray (``ray.nodes()``)."""

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def request_from_autoscaler(bundles: list[dict]) -> None:
    """Ask the autoscaler for room for ``bundles`` (``[]`` withdraws the request). One request per cluster:
    each call replaces the one before, from whichever driver it came."""

    request_resources(bundles=list(bundles))


# ----------------------------------------------------------------------------------------------- fitting
def fits(bundles: list[dict], nodes: list[dict]) -> bool:
    """Whether each bundle can be placed on one of ``nodes`` (resource dicts), none counted twice: first fit,
    largest bundles first (exact for equal bundles, which is what stages ask for)."""
    free = [dict(node) for node in nodes]
    for bundle in sorted(bundles, key=_size, reverse=True):
        node = next((n for n in free if _holds(n, bundle)), None)
        if node is None:
            return False
        for key, value in bundle.items():
            node[key] = node.get(key, 0) - value
    return True


def shortfall(bundles: list[dict], nodes: list[dict]) -> str | None:
    """Why a fixed cluster of ``nodes`` cannot hold ``bundles``, naming the numbers; None when it can."""
    need, have = _totals(bundles), _totals(nodes)
    short = [k for k in sorted(need) if need[k] > have.get(k, 0)]
    if short:
        return (
            f"needs {_amounts(need, short)}, but the cluster has {', '.join(_amount(k, have.get(k, 0)) for k in short)}"
        )
    if fits(bundles, nodes):
        return None
    return (
        f"needs {_bundles_text(bundles)}, each on one node, but the nodes have "
        f"{'; '.join(_amounts(n, sorted(need)) for n in nodes)}"
    )


def never_fits(bundles: list[dict], nodes: list[dict], autoscaler: Autoscaler) -> str | None:
    """Why ``bundles`` cannot fit even once ``autoscaler`` has launched all it may; None when they may (or when
    its node types do not say what they hold). Generous: nodes already up count on top of the limits."""
    types = autoscaler.node_types
    if types is None or any(not t.resources for t in types):
        return None
    shapes = [*nodes, *(t.resources for t in types)]
    for bundle in bundles:
        if not any(_holds(shape, bundle) for shape in shapes):
            return (
                f"needs {_bundles_text([bundle])} on one node, but no node has that and no node type its "
                f"autoscaler can launch does ({_types_text(autoscaler)})"
            )
    need, have = _totals(bundles), _totals(nodes)
    for key in sorted(need):
        added = _most_added(autoscaler, key)
        if need[key] > have.get(key, 0) + added:
            return (
                f"needs {_amount(key, need[key])}, but the cluster has {have.get(key, 0):g} and its autoscaler "
                f"can add at most {added:g} ({_types_text(autoscaler)})"
            )
    return None


def _most_added(autoscaler: Autoscaler, key: str) -> float:
    """The most of resource ``key`` the autoscaler's new nodes can hold: the richest types first, within the
    per-type and the overall node limits."""
    left, added = autoscaler.max_nodes, 0.0
    for amount, count in sorted(((t.resources.get(key, 0), t.max_nodes) for t in autoscaler.node_types), reverse=True):
        take = min(count, left)
        if amount > 0 and take > 0:
            added, left = added + amount * take, left - take
    return added


# ----------------------------------------------------------------------------------------------- waiting
def ensure_resources(
    bundles: list[dict],
    *,
    what: str,
    timeout_s: float,
    autoscaler: Autoscaler | None,
    read_nodes: Callable[[], list[dict]] = alive_node_resources,
    request: Callable[[list[dict]], None] = request_from_autoscaler,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    report: Callable[[str], None] | None = None,
) -> float:
    """Return once the cluster's nodes can hold ``bundles``; the seconds waited (0.0 when they could at once).

    ``what``: the request as the user made it (e.g. ``"--actors 2 x --threads 2"``), the start of every message.
    ``autoscaler``: :func:`read_autoscaler`'s answer. ``read_nodes``, ``request``, ``clock``, ``sleep`` and
    ``report`` (default: print) are Ray's node list, the autoscaler request, ``time.monotonic``, ``time.sleep``
    and the progress output; tests replace them. Raises ValueError when the cluster can never hold the bundles
    (at once) or the autoscaler has not made room within ``timeout_s`` seconds.
    """
    report = report or _print
    nodes = read_nodes()
    if fits(bundles, nodes):
        return 0.0
    if autoscaler is None:
        raise UserError(f"{what} {shortfall(bundles, nodes)}")
    never = never_fits(bundles, nodes, autoscaler)
    if never:
        raise UserError(f"{what} {never}")
    report(
        f"{what} needs {_amounts(_totals(bundles))}; {_progress(bundles, nodes)}: asked the autoscaler "
        f"({autoscaler.source}), waiting up to {timeout_s:g} s"
    )
    request(list(bundles))
    try:
        return _wait(bundles, what, timeout_s, read_nodes, clock, sleep, report)
    finally:
        # The request outlives this process (it stays until the next request replaces it), so left in place it
        # would keep GPU nodes running after raydet is done or gave up. Once the nodes are up, the stage's own
        # placement group (Ray Train) or actors carry the demand; they are created seconds after this returns,
        # far sooner than the autoscaler's idle timeout (minutes) would stop an idle node.
        request([])


def _wait(bundles, what, timeout_s, read_nodes, clock, sleep, report) -> float:
    start = clock()
    next_report = REPORT_EVERY_S
    while True:
        sleep(max(0.0, min(POLL_S, start + timeout_s - clock())))
        nodes, waited = read_nodes(), clock() - start
        if fits(bundles, nodes):
            report(f"{what}: the cluster holds it after {waited:.0f} s")
            return waited
        if waited >= timeout_s:
            raise UserError(
                f"{what}: the autoscaler did not make room within {timeout_s:g} s "
                f"(--resource-timeout): {_progress(bundles, nodes)}; `ray status` on the head "
                f"says why (instance limits, capacity, failed node setup)"
            )
        if waited >= next_report:
            report(
                f"{what}: waiting for the autoscaler: {_progress(bundles, nodes)} after {waited:.0f} s "
                f"(timeout {timeout_s:g} s)"
            )
            next_report += REPORT_EVERY_S


def _progress(bundles: list[dict], nodes: list[dict]) -> str:
    need, have = _totals(bundles), _totals(nodes)
    short = [k for k in sorted(need) if need[k] > have.get(k, 0)]
    if not short:
        return f"the cluster has {_amounts(need)} in all, but not on nodes that can each hold a bundle"
    return ", ".join(f"{have.get(k, 0):g} of {_amount(k, need[k])}" for k in short) + " in the cluster"


def _print(line: str) -> None:
    print(line, flush=True)


# ----------------------------------------------------------------------------------------------- arithmetic, text
def _holds(node: dict, bundle: dict) -> bool:
    return all(node.get(k, 0) >= v for k, v in bundle.items() if v > 0)


def _size(bundle: dict) -> tuple:
    return bundle.get("GPU", 0), bundle.get("CPU", 0), sum(bundle.values())


def _totals(dicts: list[dict]) -> dict:
    total: Counter = Counter()
    for d in dicts:
        total.update({k: v for k, v in d.items() if isinstance(v, (int, float))})
    return dict(total)


def _amount(key: str, value: float) -> str:
    plural = "s" if key in ("CPU", "GPU") and value != 1 else ""
    return f"{value:g} {key}{plural}"


def _amounts(resources: dict, keys: list[str] | None = None) -> str:
    keys = keys if keys is not None else sorted(k for k in resources if k in ("CPU", "GPU") or resources[k] > 0)
    return ", ".join(_amount(k, resources.get(k, 0)) for k in keys)


def _bundles_text(bundles: list[dict]) -> str:
    counts = Counter(json.dumps(b, sort_keys=True) for b in bundles)
    return "; ".join(f"{n} x ({_amounts(json.loads(b))})" for b, n in counts.items())


def _types_text(autoscaler: Autoscaler) -> str:
    def limit(n: float) -> str:
        return "no limit" if math.isinf(n) else f"at most {n:g}"

    types = "; ".join(f"{t.name}: {_amounts(t.resources)} each, {limit(t.max_nodes)}" for t in autoscaler.node_types)
    return f"{types or 'no node type it may launch'}; worker nodes in all: {limit(autoscaler.max_nodes)}"
