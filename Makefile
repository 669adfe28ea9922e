# Two targets a newcomer needs (README "Quick start"), plus the benchmarks.
# Every target first creates .venv and installs dasd into it (scripts/setup.sh), once.
PY := .venv/bin/python
STAMP := .venv/.dasd-installed

.PHONY: setup reproduce demo test test-slow bench

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	@bash scripts/setup.sh
	@touch $@

# The paper's probes on the built-in world, the paper's numbers beside ours (runs/reproduce-quick).
reproduce: $(STAMP)
	.venv/bin/dasd-probe reproduce --budget quick

demo: $(STAMP)
	.venv/bin/dasd-probe eval

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,trl]'
	$(PY) -m pytest -m slow
	$(PY) -m pytest tests/test_trl_integration.py tests/test_importers.py

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) -m benchmarks.bench_advantages
	$(PY) -m benchmarks.bench_entropy
	$(PY) -m benchmarks.bench_rollout
	$(PY) -m benchmarks.bench_lockstep
	$(PY) -m benchmarks.bench_trainer
	$(PY) -m benchmarks.bench_health
