# Two entry points for a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
UV := $(PYTHON) -m uv

.PHONY: install test lint typecheck demo demo-core bench

install:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --all-extras --frozen

lint: install
	$(UV) run --frozen ruff check src tests bench examples pipelines

typecheck: install
	$(UV) run --frozen mypy

test: lint typecheck
	$(UV) run --frozen pytest

demo: install
	$(UV) run --frozen python examples/salesforce_demo.py

demo-core: install
	$(UV) run --frozen python examples/demo.py

bench: install
	$(UV) run --frozen python bench/partial_parse.py
	$(UV) run --frozen python bench/operator_build.py
