# Two entry points for a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
UV := $(PYTHON) -m uv

.PHONY: install system-deps test test-compat lint typecheck demo demo-core bench plugin-venv

install:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --all-extras --frozen

lint: install
	$(UV) run --frozen ruff check src tests bench examples pipelines

typecheck: install
	$(UV) run --frozen mypy

# PostgreSQL server binaries, util-linux unshare and Chromium: installed with apt-get when missing and this
# user may (root or passwordless sudo); otherwise it names the packages to install and stops.
system-deps:
	@scripts/system-deps.sh

test: system-deps lint typecheck
	$(UV) run --frozen pytest --durations=15
	$(MAKE) --no-print-directory test-compat

# The lowest supported Airflow (3.1) in its own locked environment: the operator's DAG tests, the real
# scheduler/triggerer/api-server smoke test, the version layer, the node tasks' no-hang fallback, the mapped
# layout's worker path and the asset declarations Airflow 3.1 must accept (not every asset test: their
# dbt runs cost minutes), run from this directory so
# tests/conftest.py and pyproject.toml's pytest settings apply. --locked: when this project's dependencies
# change, the run stops until `python3 -m uv lock --project compat/airflow-3.1` refreshes that lock too.
COMPAT := compat/airflow-3.1
test-compat: system-deps
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --project $(COMPAT) --locked
	$(UV) run --project $(COMPAT) --locked pytest tests/test_operator.py tests/test_scheduler_smoke.py tests/test_compat.py \
		"tests/test_first_hour.py::test_node_tasks_end_within_seconds_of_a_producer_that_failed_before_launch" \
		"tests/test_mapped.py::test_mapped_nodes_under_dag_test_run_on_the_worker_path" \
		tests/test_assets.py -k "not test_assets or unchecked_asset or nodes_shape_emits or single_shape_emits"

# Every dbt plugin in a venv of its own, for tests/test_adapter_plugins.py. Built once per pinned
# tests/adapter_plugins/requirements.txt into ~/.cache/dlh-airflow-common (or $DLH_PLUGIN_VENV_ROOT);
# the test builds it itself when missing, this target only does it ahead of time.
plugin-venv: install
	$(UV) run --frozen python -m tests.adapter_plugins.venv

demo: install
	$(UV) run --frozen python examples/salesforce_demo.py

demo-core: install
	$(UV) run --frozen python examples/demo.py

bench: install
	$(UV) run --frozen python bench/partial_parse.py
	$(UV) run --frozen python bench/operator_build.py
	$(UV) run --frozen python bench/render.py
	$(UV) run --frozen python bench/per_node.py

# The demo's DAGs run by a real scheduler (api-server, scheduler, dag-processor, triggerer on .demo/airflow),
# so the UI shows their task logs; prints the URL and login, runs until Ctrl-C. After `make demo` or alone.
demo-ui: install
	$(UV) run --frozen python examples/demo_ui.py
