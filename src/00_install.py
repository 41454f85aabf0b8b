"""python src/00_install.py [--root DIR] [--venv DIR] [--check] [--debug]

Install the pinned libraries for this machine (Colab GPU or local CPU) and print a report. The logic lives in prodesc/install.py; --help lists the options.
"""

import sys

from prodesc import install

if __name__ == "__main__":
    sys.exit(install.main(sys.argv[1:]))
