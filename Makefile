# Two commands for a fresh machine (README): `make quickstart` (set up + main job) and `make test` (set up + tests).
# torch is installed first and pinned: the CPU wheel 2.13.0 is on local disk, while a bare `torch`
# requirement resolved from nothing would pull a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,eval,ray,deepspeed,track
STAMP := $(VENV)/.nvembed-installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup quickstart demo test test-slow lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile cluster/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c cluster/constraints.txt -e ".[$(EXTRAS)]"   # the versions the image pins
	touch $@

quickstart: setup
	$(VENV)/bin/nvembed train jobs/configs/quickstart.yaml

demo: setup
	$(VENV)/bin/nvembed demo

test: setup
	RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.2 DS_ACCELERATOR=cpu $(PY) -m pytest --durations=20

test-slow: setup
	$(PY) -m pytest -m slow

lint: setup
	$(VENV)/bin/ruff check nvembed evaluation tune tests benchmarks && $(VENV)/bin/ruff format --check nvembed evaluation tune tests benchmarks

bench: setup
	$(PY) benchmarks/encode.py

clean:
	rm -rf $(VENV) build *.egg-info
