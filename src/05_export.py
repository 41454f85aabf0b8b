"""python src/05_export.py [--preset NAME] [--root DIR] [key=value ...]

Export the fine-tuned model: GGUF files (llama.cpp, Ollama, LM Studio) with a round-trip check, an Ollama Modelfile, and a Hub push with hub.repo=user/name. The logic lives in prodesc/export.py; --help lists the options.
"""

import sys

from prodesc import export

if __name__ == "__main__":
    sys.exit(export.main(sys.argv[1:]))
