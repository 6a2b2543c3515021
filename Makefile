# DiffLoss tutorial: every target sets itself up (idempotent) and runs from a fresh clone.
#   make demo   execute every chapter in notebooks/ in order (default profile), writing figures/
#               and each chapter's time to figures/demo_times.json
#   make test   ruff + pytest (unit tests and nbval over the notebooks, DIFFLOSS_PROFILE=ci)
#   make test-kernels  the numerics-heavy tests under ATEN_CPU_CAPABILITY=default (CI runs it too)
#   make lab    JupyterLab on the chapters (127.0.0.1, as root too; prints the URL; LAB_PORT=8888)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.diffloss-installed
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test test-kernels lint unit nbval lab notebooks bench clean

# The numerics-heavy tests (two training runs compared, losses and gradients against references),
# run again by .ci/run under a second set of torch CPU kernels: readers' CPUs differ (AVX-512,
# AVX2, ...) and a comparison must agree by design, not by the kernels of one machine.
NUMERICS_TESTS := tests/test_sync_free.py tests/test_train.py tests/test_loss.py \
	tests/test_schedule.py tests/test_losses_compare.py tests/test_metrics.py
ALT_CPU_CAPABILITY ?= default

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV) (pip install -e .[dev]; log in $(VENV)/install.log)"
	@$(BIN)/python -m pip install --quiet --upgrade pip > $(VENV)/install.log 2>&1 && \
		$(BIN)/python -m pip install --quiet -e ".[dev]" >> $(VENV)/install.log 2>&1 || \
		{ cat $(VENV)/install.log; exit 1; }
	@touch $(STAMP)

demo: setup
	$(BIN)/python tools/run_chapters.py

lint: setup
	$(BIN)/ruff check .

unit: setup
	$(BIN)/python -m pytest tests

nbval: setup
	DIFFLOSS_PROFILE=ci $(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks

# Two workers (pytest-xdist), one torch thread each: the chapters on one of them in order (chapter
# 07 reads chapter 06's runs), each test module on one (tests/conftest.py's scheduler).
TEST_WORKERS ?= 2

test: lint setup
	DIFFLOSS_PROFILE=ci $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope \
		--nbval-lax --nbval-current-env notebooks tests

test-kernels: setup
	ATEN_CPU_CAPABILITY=$(ALT_CPU_CAPABILITY) DIFFLOSS_PROFILE=ci $(BIN)/python -m pytest -q \
		-p no:cacheprovider $(NUMERICS_TESTS)

lab: setup
	$(BIN)/python tools/lab.py

# Rebuild notebooks/NN_*.ipynb (unexecuted) from notebooks/src/NN_*.py; run `make demo` after.
notebooks: setup
	$(BIN)/python tools/build_notebooks.py

bench: setup
	$(BIN)/python benchmarks/bench_diffloss.py --append

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache figures/ci
