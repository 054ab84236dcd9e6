# shootdown: `make help` lists the targets.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv test demo lint clean bench

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "}; /^[a-zA-Z_-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@$(BIN)/pip install -q -e '.[fuzz]' || echo "note: atheris could not be installed; --engine atheris is unavailable"
	@touch $@

venv: $(STAMP) ## create .venv and install shootdown into it (done by every target that needs it)

test: $(STAMP) ## run the test suite (derandomized, a few minutes at most)
	$(BIN)/pytest -q
	$(BIN)/lint-imports

demo: $(STAMP) ## replay every litmus program of corpus/ on the three built-in strategies
	@for f in $$($(BIN)/python -c "from fuzz import corpus; print(*corpus.litmus_files('corpus'))"); do \
		$(BIN)/shootdown run -q --trust-plugins-under . "$$f"; echo; done; true

FUZZ_SECONDS ?= 240
# FUZZ_RUNS=N: N programs per cell instead of FUZZ_SECONDS (a reproducible, load-independent run)
FUZZ_RUNS ?=
STRATEGY ?=
# JUNIT=report.xml: also write a JUnit XML report (make fuzz, make matrix)
JUNIT ?=
.PHONY: fuzz
fuzz: $(STAMP) ## canary, then each strategy on its SAFE_ON envs for FUZZ_SECONDS (STRATEGY=file.py: yours)
	$(BIN)/shootdown fuzz --safe-on $(if $(FUZZ_RUNS),--runs $(FUZZ_RUNS),--budget $(FUZZ_SECONDS)) $(if $(STRATEGY),--strategy-file $(STRATEGY)) $(if $(JUNIT),--junit $(JUNIT))

# worker-seconds per cell: the S cells use the whole budget, so make matrix takes about
# (S cells x budget) / jobs + ~20 s (48 cells, 36 S, took 9:18 at 30 s: 540 s + 18 s).
# 72 cells (24 environments x 3 built-ins), 55 of them S in corpus/expected-matrix.yaml:
# 17 s gives 55 x 17 / 2 = 468 s, under 10 minutes on 2 cores (20 s would be ~570 s)
MATRIX_BUDGET ?= 17
MATRIX_JOBS ?= 2
.PHONY: matrix
matrix: $(STAMP) ## fuzz every strategy x environment cell, compare with corpus/expected-matrix.yaml
	$(BIN)/shootdown matrix --budget $(MATRIX_BUDGET) --jobs $(MATRIX_JOBS) --expected corpus/expected-matrix.yaml $(if $(JUNIT),--junit $(JUNIT))

EXPLORE_SECONDS ?= 600
EXPLORE_JOBS ?= 2
DIR ?= explore-out
.PHONY: prove
prove: $(STAMP) ## every corpus verdict explored exhaustively up to 2 preemptions (bench/exhaustive.py)
	$(BIN)/python bench/exhaustive.py --reduction none

.PHONY: explore
explore: $(STAMP) ## behaviour-guided exploration for EXPLORE_SECONDS, resumable from DIR; writes DIR/report.md
	$(BIN)/shootdown explore --budget $(EXPLORE_SECONDS) --jobs $(EXPLORE_JOBS) --dir $(DIR)

SOAK_SEEDS ?= 5
SOAK_PROGRAMS ?= 4000
SOAK_JOBS ?= 2
.PHONY: soak
soak: $(STAMP) ## the gate for model/oracle changes: built-ins on their SAFE_ON envs, many seeds (SOAK_SEEDS, SOAK_PROGRAMS)
	$(BIN)/python bench/soak.py --seeds $(SOAK_SEEDS) --programs $(SOAK_PROGRAMS) --jobs $(SOAK_JOBS) $(if $(SOAK_FIRST_SEED),--first-seed $(SOAK_FIRST_SEED))

BENCH_JOBS ?= 2
bench: $(STAMP) ## print the benchmarks' figures (throughput, scaling, engines, detection, exhaustive, loader; ~35 min)
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/scaling.py
	$(BIN)/python bench/engines.py
	$(BIN)/python bench/detection.py --jobs $(BENCH_JOBS)
	$(BIN)/python bench/exhaustive.py --reduction none
	$(BIN)/python bench/loader.py

# optional: the machine core, the oracle and the generator compiled with mypyc (tools/compiled.py MODULES), extension modules that
# shadow their .py files; needs a C compiler. Nothing else depends on it (make test, make fuzz and
# .ci/run are pure Python); make clean-compiled brings the pure-Python path back.
.PHONY: compiled clean-compiled
compiled: $(STAMP) ## optional, ~1.6x faster: compile the machine core and the oracle with mypyc (installs mypy; needs a C compiler)
	$(BIN)/pip install -q 'mypy>=1.16'
	$(BIN)/python tools/compiled.py build

clean-compiled: ## remove what make compiled built: the pure-Python path again
	$(PY) tools/compiled.py clean

lint: $(STAMP) ## ruff check
	$(BIN)/ruff check impls oracle fuzz tests bench tools

clean: clean-compiled ## remove the virtualenv, caches and the compiled modules
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
