"""`ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/tune.py ARGS`.

ARGS are those of `raydet tune` (see `python jobs/tune.py --help`); PREP and --out must be storage every node
reaches. Submitting the same command again continues an interrupted search.
"""

import sys

from raydet.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
