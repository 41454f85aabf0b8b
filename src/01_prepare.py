"""python src/01_prepare.py [--preset NAME] [--root DIR] [--inspect] [key=value ...]

Clean, deduplicate and split trn.json (or the dataset's zip) into a prepared dataset under <root>/data/prepared/; --inspect only shows the file it would read and its rows. The logic lives in prodesc/prepare.py; --help lists the options.
"""

import sys

from prodesc import prepare

if __name__ == "__main__":
    sys.exit(prepare.main(sys.argv[1:]))
