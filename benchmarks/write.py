"""Shard-write benchmark: ``raydet.ingest.prepare.write_shard`` against Parquet writing straight into the file.

    .venv/bin/python benchmarks/write.py                      # 20 shards of 111 raccoon photos at 224 px, each way
    .venv/bin/python benchmarks/write.py --out /mnt/nfs/tmp   # on the file system your PREP folders live on

Both sides write the same rows (decoded once, up front) as new files, alternating shard by shard so that
whatever the machine does meanwhile falls on both alike:

- **direct**: ``pq.write_table(table, path)``, as ``write_shard`` did before: Parquet hands the file system
  whole column chunks (16 MiB of pixels per shard) in single writes;
- **raydet**: ``write_shard``: the same table encoded into memory, then written in pieces of
  ``WRITE_CHUNK`` bytes (``_write_in_pieces``).

Prints user and kernel CPU per image of each and their ratio. Kernel time is where they differ: on the
2-core VM this project is measured on, one multi-MiB write into a new file cost ~2.1-2.6 ms of kernel time
per MiB, pieces of 64 KiB-1 MiB 0.2-0.25 ms. Run it more than once: page-cache state moves the absolute times.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

RACCOON = Path(__file__).resolve().parents[2] / "shared" / "data" / "raccoon"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=20, help="shards written each way")
    p.add_argument("--rows", type=int, default=111, help="images per shard (111 = 16 MiB at 224 px, as prepare)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--source", default=str(RACCOON / "images"), help="folder of photos to decode once")
    p.add_argument("--out", default=None, help="folder to write into (default: a temporary folder)")
    return p


def rows_from(folder: Path, n: int, size: int) -> list[dict]:
    from raydet.ingest.images import decode_resize

    files = sorted(p for p in folder.iterdir() if p.is_file())
    rows = []
    for i in range(n):
        path = files[i % len(files)]
        pixels, width, height = decode_resize(path.read_bytes(), size)
        rows.append(
            {
                "file": path.name,
                "image": pixels,
                "boxes": np.zeros((1, 4), np.float32),
                "labels": np.zeros((1,), np.int32),
                "num_objects": 1,
                "width": width,
                "height": height,
            }
        )
    return rows


def cpu() -> np.ndarray:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return np.array([r.ru_utime, r.ru_stime])


def main(argv: list[str] | None = None) -> None:
    from raydet.ingest import shards as D

    args = get_args_parser().parse_args(argv)
    rows = rows_from(Path(args.source), args.rows, args.image_size)
    out = Path(tempfile.mkdtemp(prefix="raydet-write-", dir=args.out))
    spent = {"direct": np.zeros(2), "raydet": np.zeros(2)}
    wall = {"direct": 0.0, "raydet": 0.0}

    def direct(path: str) -> None:
        # write_shard's table and options, but Parquet writes into the file itself
        table = D.shard_table(rows)
        pq.write_table(table, path, **D.parquet_options(table))

    def raydet(path: str) -> None:
        D.write_shard(path, rows)

    try:
        raydet(str(out / "warm-up.parquet"))  # imports and first-call set-up out of the timing
        direct(str(out / "warm-up-direct.parquet"))
        sides = (("raydet", raydet), ("direct", direct))
        for k in range(args.shards):
            for name, fn in sides if k % 2 == 0 else sides[::-1]:
                c, t = cpu(), time.perf_counter()
                fn(str(out / f"{name}-{k}.parquet"))
                wall[name] += time.perf_counter() - t
                spent[name] += cpu() - c
        n = args.shards * args.rows
        print(f"{args.shards} shards x {args.rows} images of {args.image_size} px each way, into {out.parent}")
        for name in ("direct", "raydet"):
            user, kernel = spent[name] / n * 1e3
            print(
                f"  {name:7s} user {user:.3f} + kernel {kernel:.3f} = {user + kernel:.3f} ms CPU per image "
                f"({wall[name] / n * 1e3:.3f} ms wall)"
            )
        ratio = spent["direct"].sum() / spent["raydet"].sum()
        print(f"writing straight into the file used {ratio:.2f}x the CPU per image of raydet's write_shard")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
