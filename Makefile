# Two commands for a fresh machine (see README):
#   make local   install into .venv, then run the pipeline on the embedded model + bundled sample
#   make test    install into .venv, then run the test suite (what .ci/run runs)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ROOT   ?= artifacts

.PHONY: install local test

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	$(PY) src/00_install.py

local: install
	$(PY) src/01_prepare.py --preset cpu --root $(ROOT)
	$(PY) src/02_sft_qlora.py --preset cpu --root $(ROOT)
	$(PY) src/03_merge_fp16.py --preset cpu --root $(ROOT)
	$(PY) src/04_quick_demo.py --preset cpu --root $(ROOT) "Stainless Steel Garlic Press with Cleaning Brush"
	@echo "comparison: $(ROOT)/runs/cpu/eval/side_by_side.csv and $(ROOT)/runs/cpu/eval/report.html"

test: install
	$(PY) -m pytest -q
