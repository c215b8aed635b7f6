"""`ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/train.py ARGS`.

ARGS are those of `raydet train` (see `python jobs/train.py --help`); paths must be storage every node reaches.
"""

import sys

from raydet.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
