"""python src/04_quick_demo.py [--preset NAME] [--root DIR] [--no-base] [--titles-file F] [key=value|TITLE...]

Write descriptions for your own titles with the base and fine-tuned models, the fine-tuned one
streamed. Titles: arguments, --titles-file, stdin, or a prompt. The logic lives in prodesc/demo.py.
"""

import sys

from prodesc import demo

if __name__ == "__main__":
    sys.exit(demo.main(sys.argv[1:]))
