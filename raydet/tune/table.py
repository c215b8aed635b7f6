"""The table of a finished search: one row per trial (its configuration, val AP50 of the model in its RUN, epochs
run of planned, what became of it, wall time), printed and written as ``RUNS/NAME/trials.md`` and ``trials.json``.

A trial record is a dict: ``trial`` (k), ``run`` (its RUN folder), ``config`` (raydet.tune.space's point: lr,
batch, aug, backbone, epochs), ``status`` ("done", "stopped" by ASHA, "failed"), ``epochs_run``, ``val_ap50`` (of
its last validated epoch, the one its model.keras holds; None without one), ``seconds`` and ``error`` (a line).
"""

from __future__ import annotations

import json

from raydet.cluster import storage

TABLE_FILE = "trials.md"
JSON_FILE = "trials.json"
HEAD = ("trial", "backbone", "lr", "batch", "aug", "epochs", "val AP50", "status", "time")


def best_trial(records: list[dict]) -> dict | None:
    """The record with the highest ``val_ap50`` among trials that have a model (the first of equals); None when
    no trial has one."""
    scored = [r for r in records if r["status"] != "failed" and r.get("val_ap50") is not None]
    return max(scored, key=lambda r: r["val_ap50"], default=None)


def _status(record: dict) -> str:
    if record["status"] == "stopped":
        return f"stopped by ASHA at epoch {record['epochs_run']}"
    if record["status"] == "failed":
        return f"failed: {record.get('error') or '?'}"
    return record["status"]


def _cells(record: dict) -> tuple[str, ...]:
    c = record["config"]
    ap = record.get("val_ap50")
    return (
        f"trial-{record['trial']}",
        str(c.get("backbone", "-")),
        f"{c['lr']:.2e}" if "lr" in c else "-",
        str(c.get("batch", "-")),
        f"{c['aug']:.2f}" if "aug" in c else "-",
        f"{record.get('epochs_run', 0)}/{c.get('epochs', '-')}",
        "-" if ap is None else f"{ap:.3f}",
        _status(record),
        f"{record.get('seconds') or 0:.0f} s",
    )


def format_table(records: list[dict]) -> str:
    """Records -> a Markdown table (``| trial | backbone | ... |``), one row per trial in trial order; the best
    trial's name is marked with ``*``."""
    best = best_trial(records)
    rows = []
    for record in sorted(records, key=lambda r: r["trial"]):
        cells = list(_cells(record))
        if best is not None and record["trial"] == best["trial"]:
            cells[0] += " *"
        rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEAD)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(HEAD), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def summary_lines(records: list[dict], search_dir: str) -> list[str]:
    """The lines under the table: the best trial (or that none has a model), how many ASHA stopped or failed."""
    best = best_trial(records)
    stopped = sum(r["status"] == "stopped" for r in records)
    failed = sum(r["status"] == "failed" for r in records)
    lines = [f"{len(records)} trials: {stopped} stopped early by ASHA, {failed} failed (* = best)"]
    if best is None:
        lines.append("no trial produced a model")
    else:
        lines.append(f"best: trial-{best['trial']} (val AP50 {best['val_ap50']:.3f}): {best['run']}")
        lines.append(
            f"  quantize and evaluate it: raydet quantize {best['run']} && raydet evaluate {best['run']} --data PREP"
        )
    lines.append(f"table: {storage.join(search_dir, TABLE_FILE)} and {JSON_FILE}")
    return lines


def write_tables(search_dir: str, records: list[dict], search: dict) -> None:
    """``search_dir/trials.md`` (the table and the best trial) and ``trials.json`` (``{"search", "trials",
    "best"}``, best the trial's RUN folder or None); ``search`` is what the search ran with (search.json)."""
    best = best_trial(records)
    text = "# raydet tune\n\n" + format_table(records) + "\n\n" + "\n".join(summary_lines(records, search_dir)) + "\n"
    storage.write_text(storage.join(search_dir, TABLE_FILE), text)
    storage.write_text(
        storage.join(search_dir, JSON_FILE),
        json.dumps(
            {
                "search": search,
                "trials": sorted(records, key=lambda r: r["trial"]),
                "best": None if best is None else best["run"],
            },
            indent=2,
        )
        + "\n",
    )
