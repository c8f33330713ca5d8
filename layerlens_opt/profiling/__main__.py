"""``python -m layerlens_opt.profiling ARGS`` = ``layerlens-opt profile ARGS``; the form torchrun runs:

    torchrun --nproc_per_node 2 -m layerlens_opt.profiling --model minilm --data train.jsonl -o manifest.json

(``-S first-order`` for the other signal: torchrun's parser mistakes ``--signal`` for its ``--signals-to-handle``.)
"""

import sys

from ..cli import main

if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses in tests/test_distributed.py
    main(["profile", *sys.argv[1:]], prog_name="python -m layerlens_opt.profiling")
