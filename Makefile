# Two commands for a fresh machine (see README):
#   make local   install into .venv, then run the pipeline on the embedded model + bundled sample
#                (01 prepare .. 05 export: GGUF f16 + q8_0 and an Ollama Modelfile)
#   make test    install into .venv, then run the test suite (what .ci/run runs)
#   make test-fast   the same without the tests marked slow (end-to-end runs of real models)
#   make colab-bundle   prodesc-code.zip: the code to upload to MyDrive/prodesc/ for the notebook
#   make docs    regenerate docs/keys.md (the key reference) from src/prodesc/config.py

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ROOT   ?= artifacts

.PHONY: install local test test-fast colab-bundle docs

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	$(PY) src/00_install.py

local: install
	$(PY) src/01_prepare.py --preset cpu --root $(ROOT)
	$(PY) src/02_sft_qlora.py --preset cpu --root $(ROOT)
	$(PY) src/03_merge_fp16.py --preset cpu --root $(ROOT)
	$(PY) src/04_quick_demo.py --preset cpu --root $(ROOT) "Stainless Steel Garlic Press with Cleaning Brush"
	$(PY) src/05_export.py --preset cpu --root $(ROOT)
	@echo "comparison: $(ROOT)/runs/cpu/eval/side_by_side.csv and $(ROOT)/runs/cpu/eval/report.html"
	@echo "GGUF (f16, q8_0) and Ollama Modelfile: $(ROOT)/runs/cpu/export/"

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# What the Colab notebook needs (no tests, benchmarks or docs), from this checkout as it is now,
# under one folder prodesc/; written to a temporary name first, then renamed.
BUNDLE_FILES := src configs colab requirements-colab.txt requirements-local.txt pyproject.toml README.md LICENSE Makefile
colab-bundle:
	git ls-files --cached --others --exclude-standard -- $(BUNDLE_FILES) | $(PYTHON) -c "import os, sys, zipfile; \
	z = zipfile.ZipFile('prodesc-code.zip.tmp', 'w', zipfile.ZIP_DEFLATED); \
	[z.write(f, 'prodesc/' + f) for f in sys.stdin.read().splitlines() if os.path.isfile(f)]; z.close(); \
	os.replace('prodesc-code.zip.tmp', 'prodesc-code.zip')"
	@echo "prodesc-code.zip: upload it to MyDrive/prodesc/ (the notebook's DRIVE_FOLDER) and Run all"

docs:
	PYTHONPATH=src $(PYTHON) -c "from prodesc import atomic, config; atomic.write_text('docs/keys.md', config.keys_markdown())"
