"""`ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/quantize.py ARGS`.

ARGS are those of `raydet quantize` (see `python jobs/quantize.py --help`); paths must be storage every node reaches.
"""

import sys

from raydet.cli import main

if __name__ == "__main__":
    sys.exit(main(["quantize", *sys.argv[1:]]))
