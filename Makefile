# sonolab: one command per job. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PRESET ?= demo
DATA   ?= data/synthetic-$(PRESET)
SEED   ?= 0
PYTEST_ARGS ?=
# make test's pytest-xdist workers, one file each at a time (a 2-core machine: 2). Each worker gets one
# thread (unless OMP_NUM_THREADS says otherwise); in one process (TEST_WORKERS=0) torch's default.
TEST_WORKERS ?= 2
# one torch thread per process unless the caller's OMP_NUM_THREADS says otherwise
ONE_THREAD = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}
TEST_THREADS = $(if $(filter 0,$(TEST_WORKERS)),,$(ONE_THREAD))

.DEFAULT_GOAL := help
SWEEP ?=
SWEEP_ARGS ?=
.PHONY: help install demo test test-quick test-slow test-all lint format data bench bench-gpu sweep clean clean-venv

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,dicom]'
	@touch $@

install: $(VENV)/.installed ## create .venv if missing and install sonolab + dev tools (idempotent)

demo: install ## VideoQualityGAN demo: demo data, zoom-in pretraining, short training + test, metrics (< 15 min on 2 CPUs)
	@test -f data/synthetic-demo/synthetic.json || $(BIN)/python -m datamodules.synthetic --out data/synthetic-demo --preset demo --seed 0
	$(ONE_THREAD) $(BIN)/python -m lightning_modules.vqa_gan.demo

test: install ## the test suite CI runs (W&B disabled, slow tests left out; TEST_WORKERS=0: one process, less memory)
	WANDB_MODE=disabled $(TEST_THREADS) $(BIN)/python -m pytest -m "not slow" -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-quick: install ## the edit-test loop: make test without the tests listed in tests/heavy_tests.txt (< 2 min idle)
	WANDB_MODE=disabled $(ONE_THREAD) $(BIN)/python -m pytest -m "not slow and not ddp and not heavy" -q -x $(PYTEST_ARGS)

test-slow: install ## learnability and other long tests only
	WANDB_MODE=disabled $(BIN)/python -m pytest -m slow -q -s $(PYTEST_ARGS)

test-all: install ## every test
	WANDB_MODE=disabled $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install ## ruff lint + format check + mypy type check of the package ([tool.mypy] in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

data: install ## generate the synthetic dataset (PRESET=demo|tiny, DATA=folder, SEED=n)
	$(BIN)/python -m datamodules.synthetic --out $(DATA) --preset $(PRESET) --seed $(SEED)
	$(BIN)/python -m datamodules.validate $(DATA) --require scans,clips,images,pairs,boxes

bench: install ## step time Lightning vs plain loop, fp32 vs bf16, peak memory, loader rates (BENCH_ARGS=--quick: smoke run)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-gpu: install ## every GPU check (< 8 min): fp32/bf16/fp16, compile, cudnn.benchmark, memory, TFLOP/s -> benchmarks/results/gpu.json
	$(BIN)/python -m benchmarks.gpu $(BENCH_ARGS)

sweep: install ## run a study: SWEEP=configs/sweeps/<study>.yaml [SWEEP_ARGS='--local --count 8 -- --config ...']
	@test -n "$(SWEEP)" || { echo "give SWEEP=configs/sweeps/<study>.yaml (ls configs/sweeps)"; exit 2; }
	$(BIN)/python -m lightning_modules.sweep $(SWEEP) $(SWEEP_ARGS)
	$(BIN)/python -m lightning_modules.collate $(SWEEP) --out runs/tables

clean: ## remove caches and build leftovers (never data/, runs/ or checkpoints)
	rm -rf .cache/sonolab .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

clean-venv: ## remove the virtual environment
	rm -rf $(VENV)
