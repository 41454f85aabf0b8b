"""prodesc: fine-tune a language model to write Amazon product descriptions from titles.

All logic lives in this package; the numbered scripts in src/ are thin entry points:

    00_install.py   -> prodesc.install.main      install and check the environment
    01_prepare.py   -> prodesc.prepare.main      clean, dedupe and split trn.json
    02_sft_qlora.py -> prodesc.train.main        LoRA/QLoRA supervised fine-tuning, auto-resume
    03_merge_fp16.py-> prodesc.merge.main        merge to fp16 + side-by-side evaluation
    04_quick_demo.py-> prodesc.demo.main         try the model on your own titles
    05_export.py    -> prodesc.export.main       GGUF + Ollama Modelfile, push to the Hub
"""

__version__ = "0.1.0"
