"""`ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/prepare.py ARGS`.

ARGS are those of `raydet prepare` (see `python jobs/prepare.py --help`); paths must be storage every node reaches.
"""

import sys

from raydet.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
