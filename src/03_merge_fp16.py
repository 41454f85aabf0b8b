"""python src/03_merge_fp16.py [--preset NAME] [--root DIR] [key=value ...]

Merge the LoRA adapter into fp16 weights and write the side-by-side evaluation CSV. The logic lives in prodesc/merge.py (merge) and prodesc/evaluation.py; --help lists the options.
"""

import sys

from prodesc import merge

if __name__ == "__main__":
    sys.exit(merge.main(sys.argv[1:]))
