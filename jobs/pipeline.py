"""The whole job on a running cluster, with the flags of ``raydet run``::

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/pipeline.py --out /mnt/efs/raydet-out

Inside a job, RAY_ADDRESS points at the cluster, so ``raydet.runtime.init_ray`` connects to it (no new local
Ray) and adds only what the job's runtime env lacks (Ray refuses a repeated env var). The parser is
``raydet.cli``'s own ``run`` subcommand: one list of flags for both ways in.
"""

import sys

from raydet.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
