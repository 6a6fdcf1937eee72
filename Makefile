PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q -c constraints.txt --no-deps -e .
	# ltx-core: the official LTX-2 modules, for tests that cross-check our converter (its deps pull torchaudio)
	$(PY) -m pip install -q -c constraints.txt --no-deps ltx-core==1.0.0
	# PySceneDetect (cinetune prep split) declares the GUI opencv-python: installed beside the headless build
	$(PY) -m pip install -q -c constraints.txt --no-deps scenedetect==0.7.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cinetune demo --output_dir demo_output

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

bench: $(STAMP)
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) demo_output
