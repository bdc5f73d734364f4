# moon-ray: `make demo` runs the main job, `make test` runs the tests. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S ?= 0.2
export PYTHONUNBUFFERED := 1

.PHONY: venv demo test lint floors bench preprocess clean

venv:
	@bash scripts/bootstrap.sh $(VENV)

demo: venv
	$(VENV)/bin/moon-ray demo $(ARGS)

# lint and the floors check run first: they take seconds and fail fast
test: venv lint floors
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check moon_ray pipelines bench tests scripts

floors: venv
	$(PY) -m moon_ray.floors

bench: venv
	$(PY) bench/preprocess.py
	$(PY) bench/train_step.py
	$(PY) bench/index.py
	$(PY) bench/rollout.py
	$(PY) bench/weight_sync.py
	$(PY) bench/serve.py

clean:
	rm -rf outputs .pytest_cache
