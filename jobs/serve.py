"""`ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/serve.py RUN ARGS`.

Deploys `raydet serve RUN ARGS --detach` on the job's cluster and returns: the application keeps serving after
the job ends (`serve status`; `serve shutdown` stops it). ARGS are those of `raydet serve` (`python jobs/serve.py
--help`); RUN must be storage every node reaches (a bucket URI, or a shared folder); `--host 0.0.0.0` to answer
other machines.
"""

import sys

from raydet.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", "--detach", *sys.argv[1:]]))
