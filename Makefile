# Two commands: `make demo` and `make test`. Each creates .venv when missing and installs the
# project with this machine's pins (constraints.txt: torch==2.13.0 CPU and the rest).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,math]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/ibtpo demo

bench: $(STAMP)
	$(PY) benchmarks/sft_speed.py
	$(PY) benchmarks/rollout.py
	$(PY) benchmarks/step_time.py

clean:
	rm -rf $(VENV) runs .pytest_cache
