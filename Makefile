# shootdown: `make help` lists the targets.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv test demo lint clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "}; /^[a-zA-Z_-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

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
	@for f in corpus/*.yaml; do $(BIN)/shootdown run -q "$$f"; echo; done; true

lint: $(STAMP) ## ruff check
	$(BIN)/ruff check impls oracle fuzz tests bench

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
