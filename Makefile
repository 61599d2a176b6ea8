# make demo: set up .venv and segment the bundled sample case with the bundled weights.
# make test: set up .venv and run the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint container-test clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# --no-cache-dir: no second copy of every wheel in ~/.cache/pip (the venv alone needs about 2 GB)
	$(BIN)/python -m pip install -q --no-cache-dir --upgrade pip
	# torch first and pinned, so that no other build (a CUDA one) is pulled in
	$(BIN)/python -m pip install -q --no-cache-dir torch==2.13.0
	$(BIN)/python -m pip install -q --no-cache-dir -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	@echo "Sample case sub-201 (test/), bundled weights (model/lacunes.pt), CPU setting 'fast'"
	@echo "(no TTA, overlap 0.25; 'python process.py' with no flags runs the full recipe)."
	@rm -rf out/demo
	@$(BIN)/python process.py --input test --output out/demo --preset fast --no-progress
	@$(BIN)/lacunes evaluate --pred out/demo/images --ref test --out out/demo/evaluation --no-progress
	@echo "Outputs: out/demo/images/, out/demo/results.json, out/demo/evaluation/"

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check lacunes tests process.py benchmarks training
	$(BIN)/hadolint Dockerfile

clean:
	rm -rf out .pytest_cache
