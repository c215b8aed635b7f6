"""`ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/evaluate.py ARGS`.

ARGS are those of `raydet evaluate` (see `python jobs/evaluate.py --help`); paths must be storage every node reaches.
"""

import sys

from raydet.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
