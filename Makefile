# Set-up is idempotent: the venv is (re)built only when pyproject.toml or the installer changes.
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml transfer/install_detectron2.sh | sha1sum | cut -c1-10)

.PHONY: setup test demo bench bench-quick gpu-check clean
setup: $(STAMP)

$(STAMP): pyproject.toml transfer/install_detectron2.sh
	rm -f $(VENV)/.installed-*
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1   # from the machine's local copy
	$(PY) -m pip install -q -e '.[dev]'
	PYTHON=$(PY) bash transfer/install_detectron2.sh   # after fvcore & co, which it imports
	touch $@

test: setup   # both cores: one pytest worker each, a test file stays on one worker (its module fixtures are built once)
	$(PY) -m pytest -n 2 --dist loadfile

demo: setup
	$(PY) -m pipeline.run --config pipeline/configs/demo.yaml

bench: setup   # every benchmark, the demo-chain and test-suite wall-time rows included
	$(PY) -m bench.run_all

bench-quick: setup   # the same table without the two wall-time rows
	BENCH_QUICK=1 $(PY) -m bench.run_all

gpu-check: setup   # on a machine with a CUDA GPU: one unattended run, under 8 minutes (bench/gpu_check.py)
	$(PY) -m bench.gpu_check --out-dir runs/gpu_check

clean:
	rm -rf $(VENV) runs
