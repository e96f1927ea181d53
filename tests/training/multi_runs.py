"""Several `rankrm train` command lines in one launched set of processes (tests/training/test_multiprocess.py).

Starting 2 processes costs ~20 s of imports and rendezvous on 2 busy cores; the equality test runs its
configurations one after another in the same processes instead. Usage (under accelerate launch):
    multi_runs.py ARGS.json      # a JSON list of argument lists, each given to `rankrm train`"""

import json
import sys

from rankrm.cli import main

if __name__ == "__main__":
    for args in json.loads(open(sys.argv[1]).read()):
        code = main(["train", *args])
        if code:
            sys.exit(code)
