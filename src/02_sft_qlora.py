"""python src/02_sft_qlora.py [--preset NAME] [--root DIR] [key=value ...]

Fine-tune the model with LoRA/QLoRA on the prepared data; resumes from the run's checkpoints. The logic lives in prodesc/train.py; --help lists the options.
"""

import sys

from prodesc import train

if __name__ == "__main__":
    sys.exit(train.main(sys.argv[1:]))
