# `make demo` and `make test` are all a newcomer needs; both create .venv and install everything first. `make bench`
# runs the full benchmark (the router against PORT and baselines on replayed outcomes).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
INTEGRATIONS := $(sort $(dir $(wildcard integrations/*/pyproject.toml)))

# Everything runs offline: no hub downloads, no telemetry, LiteLLM's bundled price map.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False
export ORT_DISABLE_TELEMETRY := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-unit lint bench clean

# The CPU torch wheel goes first: a bare `torch` requirement would pull GBs of CUDA packages. pip runs with -qq
# (errors only) and setuptools' notes about editable installs are silenced: they are for packagers, not for someone
# trying the demo.
$(VENV)/.installed: pyproject.toml constraints.txt $(wildcard integrations/*/pyproject.toml)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -qq --upgrade pip
	$(PIP) install -qq torch==2.13.0
	PYTHONWARNINGS=ignore $(PIP) install -qq -c constraints.txt -e '.[dev]' $(foreach d,$(INTEGRATIONS),-e '$(d:/=)[test]')
	touch $@

# The Redis ledger's tests start their own redis-server on 127.0.0.1 (a free port; a system service on 6379 is unused).
install: $(VENV)/.installed
	command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)

# The shipped history into .llm-router (what `llm-router route` and `status` read), then the router in a real LiteLLM
# proxy against LiteLLM's own strategies under the same budgets (its last screen: the comparison and its plot).
demo: install
	$(VENV)/bin/llm-router import
	$(PY) examples/litellm_proxy/run_demo.py

test: install
	$(PY) -m pytest -q -p no:cacheprovider

test-unit: install
	$(PY) -m pytest -q -m "not integration"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: install
	$(VENV)/bin/llm-router bench --json bench-out/results.json --plot bench-out/quality_vs_budget.png

clean:
	rm -rf $(VENV) .llm-router bench-out
