"""python src/04_quick_demo.py [--preset NAME] [--root DIR] [key=value ...]

Generate descriptions for your own titles with the base and fine-tuned models. The logic lives in prodesc/demo.py; --help lists the options.
"""

import sys

from prodesc import demo

if __name__ == "__main__":
    sys.exit(demo.main(sys.argv[1:]))
