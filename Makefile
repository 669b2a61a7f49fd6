# Every target runs from the repo root so that our `pipeline`, `kernels`, `submission` and `stages`
# packages win over any same-named PyPI package.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/demo_cpu.yaml
NPROC ?= 1
NNODES ?= 1
NODE_RANK ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
SET ?=
# SET holds config overrides, `SET="train.steps=2 train.global_batch=4"`; a leading `--set` is accepted too
# (older docs wrote SET="--set ..."), so both spellings give the same `--set k=v ...` arguments.
SET_ARGS = $(if $(strip $(SET)),$(if $(filter --set,$(firstword $(SET))),$(SET),--set $(SET)))
# One process runs python itself; NPROC > 1 or NNODES > 1 runs torchrun with the rendezvous settings.
LAUNCH = $(if $(and $(filter 1,$(NPROC)),$(filter 1,$(NNODES))),$(PY),$(VENV)/bin/torchrun --nnodes $(NNODES) \
  --node-rank $(NODE_RANK) --nproc-per-node $(NPROC) --master-addr $(MASTER_ADDR) --master-port $(MASTER_PORT))
CHECKPOINT ?= runs/arc2/pretrain
CHALLENGES ?= ../shared/arc/arc-agi_evaluation2_challenges.json
SOLUTIONS ?= ../shared/arc/arc-agi_evaluation2_solutions.json
OUT ?= runs/score
AUGS ?= 1000
COMPARE ?=
# TTT=1: `make predict` / `make score` first fit CHECKPOINT to CHALLENGES' demonstrations (stages.ttt into
# TTT_OUT with the TTT_CONFIG preset; test outputs are never read) and predict with the TTT run.
TTT ?=
TTT_CONFIG ?= configs/ttt_full.yaml
TTT_OUT ?= $(OUT)/ttt
TTT_ARGS ?=
PREDICT_CKPT = $(if $(TTT),$(TTT_OUT),$(CHECKPOINT))
PYTEST_ARGS ?=
# Test workers (pytest-xdist): one per core of CI's 2-core box; `-n auto` would count physical cores through
# psutil, blind to a container's CPU quota. TEST_WORKERS=0 runs the suite in this process, one test at a time.
TEST_WORKERS ?= 2
PYTEST_XDIST = -n $(TEST_WORKERS) --dist loadgroup
KAGGLE_DIR ?= runs/kaggle
SUBMIT_OUT ?= runs/submit
BUDGET_S ?= 3600
SUBMIT_ARGS ?=
KAGGLE_ARGS ?=

.PHONY: install demo test test-fast pretrain ttt predict score bench clean kaggle kaggle-push submit gpu-data gpu-check

# Idempotent: the stamp is newer than the pins unless they changed, so a re-run does nothing.
# torch comes first from the pinned CPU wheel; nothing after it may replace it (DeepSpeed is built
# without ops and without build isolation so it reuses this torch).
install: $(STAMP)
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation deepspeed==0.19.8
	$(PY) -c "import torch; print('torch', torch.__version__, 'CUDA build', torch.version.cuda or 'none')"
	touch $(STAMP)

demo: install
	bash scripts/demo.sh

test: install
	$(PY) -m pytest -q $(PYTEST_XDIST) $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_XDIST) $(PYTEST_ARGS)

# Single process: `make pretrain CONFIG=...`; several: `make pretrain NPROC=4` (torchrun DDP, or the
# DeepSpeed engine when the config says train.engine=deepspeed); several nodes: add NNODES, NODE_RANK,
# MASTER_ADDR, MASTER_PORT on every node.
pretrain: install
	$(LAUNCH) -m stages.pretrain --config $(CONFIG) $(SET_ARGS)

# Test-time training (stages.ttt): NPROC > 1 runs one joint DDP run (or, with TTT_ARGS=--per-task, spreads tasks).
ttt: install
	$(LAUNCH) -m stages.ttt --checkpoint $(CHECKPOINT) --challenges $(CHALLENGES) --out $(TTT_OUT) \
	  --config $(TTT_CONFIG) $(SET_ARGS) $(TTT_ARGS)

predict: install $(if $(TTT),ttt)
	$(PY) -m stages.predict --checkpoint $(PREDICT_CKPT) --challenges $(CHALLENGES) --out $(OUT)/submission.json --augs $(AUGS)

# Semi-private-style local score: the hidden-test flow sees only the challenges; only the scorer reads solutions.
# --checkpoint: a warning when the scored test pairs are in the pretrained checkpoint's training data (contamination).
score: predict
	$(PY) -m stages.score --solutions $(SOLUTIONS) --submission $(OUT)/submission.json --report $(OUT)/report \
	  --run $(PREDICT_CKPT) --checkpoint $(CHECKPOINT) $(if $(COMPARE),--compare $(COMPARE))

bench: install
	$(PY) -m bench.augment
	$(PY) -m bench.vote
	$(PY) -m bench.train --config configs/demo_cpu.yaml
	$(PY) -m bench.infer --config configs/demo_cpu.yaml
	$(PY) -m bench.memory --config configs/demo_cpu.yaml
	$(PY) -m bench.crop --sizes 3 --reps 1
	$(PY) -m bench.budget --no-measure
	$(PY) -m bench.cost

# The budgeted hidden-test flow (stages.submit): fallback submission first, calibration on CHALLENGES, a plan
# of TTT steps and views inside BUDGET_S, TTT, predict, vote, write; NPROC > 1 runs one process per GPU.
# SET: TTT/predict config overrides; SUBMIT_ARGS: other stages.submit options (--ttt-config, --views, ...).
# An ensemble: CHECKPOINT="runs/a runs/b" SUBMIT_ARGS="--weights 2 1" (also for `make kaggle`, KAGGLE_ARGS).
submit: install
	$(LAUNCH) -m stages.submit --checkpoint $(CHECKPOINT) --challenges $(CHALLENGES) \
	  --out $(SUBMIT_OUT)/submission.json --work-dir $(SUBMIT_OUT)/work --budget-s $(BUDGET_S) $(SET_ARGS) $(SUBMIT_ARGS)

# Kaggle notebook + its code/weights/wheels datasets from CHECKPOINT (KAGGLE_ARGS: --owner, --budget-s,
# --no-wheels, slugs); then upload them (a dry run that prints the plan when no credentials are configured).
kaggle: install
	$(PY) -m stages.kaggle build --checkpoint $(CHECKPOINT) --out $(KAGGLE_DIR) $(KAGGLE_ARGS)

kaggle-push: install
	$(PY) -m stages.kaggle push $(KAGGLE_DIR)

# The GPU check (bench/gpu_check.py, README "GPU check"); no install: .venv/bin/python if present, else
# python3 (a lent GPU machine's torch). gpu-data copies ../shared/arc into the git-ignored .gpu_data/ for a
# machine that gets only the repository; GPU_CHECK_ARGS: --quick, --device cpu|cuda, --parts, --budget-s, --out DIR
# (without --quick it needs CUDA).
GPU_CHECK_ARGS ?=
gpu-data:
	bash scripts/gpu_check.sh --prepare

gpu-check:
	bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf runs .pytest_cache
