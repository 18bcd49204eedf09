# The two commands of the README: `make workflow` and `make test`.
# Both create the virtual environment first (once, and again when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
ARGS ?=
PYTEST_ARGS ?=

.PHONY: workflow test setup dry-run plan report lint rehearsal-models rehearsal unlock gpu-check mutation

workflow: $(VENV)/.installed
	$(VENV)/bin/snakemake --cores $(CORES) $(ARGS)

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

setup: $(VENV)/.installed

dry-run: $(VENV)/.installed
	$(VENV)/bin/snakemake -n $(ARGS)

# Every job's estimated memory, GPU memory, disk and time beside its request, totals and
# flags, e.g. make plan ARGS="--configfile config/paper.yaml" (exit 1 if a job is flagged).
plan: $(VENV)/.installed
	$(VENV)/bin/python -m knnlm_limits.plan $(ARGS)

report: $(VENV)/.installed
	$(VENV)/bin/snakemake --report report.html $(ARGS)

# Paper scale rehearsed offline: tiny local stand-ins for the hub models, then the
# whole config/rehearsal.yaml DAG (a few minutes on 2 cores).
rehearsal-models: $(VENV)/.installed
	$(VENV)/bin/python -m knnlm_limits.rehearsal rehearsal

rehearsal: rehearsal-models
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/rehearsal.yaml $(ARGS)

# After a killed run Snakemake refuses to start ("Directory cannot be locked"): release the lock.
unlock: $(VENV)/.installed
	$(VENV)/bin/snakemake --unlock $(ARGS)

# One command that checks a GPU: training, embedding and FAISS throughput and peak GPU memory
# beside the cost model's assumed GPU terms (benchmarks/gpu_check.py; a toy run on a CPU).
gpu-check: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/gpu_check.py $(ARGS)

# Mutation testing of one numeric module against its fast unit tests (mutmut, configured in
# pyproject.toml; README, "Mutation testing"): MODULE is knnlm, projection, stats, memory,
# memory_mlp, findings, index or costs. One worker of one thread (OpenMP, MKL), niced: the
# machines here have 2 cores, shared.
# Not part of `make test` or CI (minutes to an hour a module). Survivors: mutmut results;
# one mutant's diff: mutmut show NAME.
MODULE ?= knnlm
MUTATION_JOBS ?= 1
mutation: $(VENV)/.installed
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 $(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS) "knnlm_limits.$(MODULE).*"
	@echo "knnlm_limits.$(MODULE), mutmut $$($(VENV)/bin/mutmut --version | sed 's/.* //'):"
	@$(VENV)/bin/mutmut results --all true | grep -F "knnlm_limits.$(MODULE)." | sed 's/.*: //' | sort | uniq -c

lint: $(VENV)/.installed
	$(VENV)/bin/snakemake --lint $(ARGS)
	$(VENV)/bin/snakefmt --check Snakefile rules/

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $@
