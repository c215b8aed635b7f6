"""The whole job on a running cluster, with the flags of ``raydet run``::

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/pipeline.py --out /mnt/efs/raydet-out

Inside a job, RAY_ADDRESS points at the cluster, so ``raydet.cluster.runtime.init_ray`` connects to it (no new local
Ray) and adds only what the job's runtime env lacks (Ray refuses a repeated env var). The parser is
``raydet.cli``'s own ``run`` subcommand: one list of flags for both ways in.
"""

import sys
from pathlib import PurePosixPath

from raydet.cli import get_args_parser, main
from raydet.cluster import storage


def check_out(argv: list[str]) -> None:
    """Refuse a relative --out: a job runs in a temporary copy of the uploaded folder, deleted afterwards. A
    bucket URI (``s3://``, ``gs://``: raydet.cluster.storage) is reachable from every node and taken as it is."""
    out = get_args_parser().parse_args(["run", *argv]).out
    if (
        not storage.is_uri(out)
        and not PurePosixPath(storage.normalize(out) if out.startswith("file://") else out).is_absolute()
    ):
        sys.exit(
            f"jobs/pipeline.py: --out {out!r} is relative, so the results would land in the job's temporary "
            "working dir and be lost; give an absolute path on storage every node reaches, "
            "e.g. --out /mnt/efs/raydet-out or --out s3://bucket/raydet-out"
        )


if __name__ == "__main__":
    check_out(sys.argv[1:])
    sys.exit(main(["run", *sys.argv[1:]]))
