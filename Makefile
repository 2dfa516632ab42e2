# vtc — every target sets itself up in .venv on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# ORT package: onnxruntime (CPU) here; set ORT=onnxruntime-gpu on a CUDA machine (never both).
ORT     ?= onnxruntime

.PHONY: setup demo data test bench bench-gpu lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# constraints.txt pins torch==2.13.0 (CPU build): without it pip pulls CUDA wheels.
	# --no-compile: the modules are compiled when first imported (the test run writes their
	# bytecode, below); compiling all of torch at install took 40 of the 84 s (2026-12-07).
	$(BIN)/pip install -q --no-compile -c constraints.txt torch==2.13.0 $(ORT)
	$(BIN)/pip install -q --no-compile -c constraints.txt -e '.[dev]'
	# TensorRT type stubs for mypy only (TensorRT itself is not installable here).
	$(BIN)/pip install -q --no-deps tensorrt-stubs || echo "tensorrt-stubs unavailable: mypy skips TensorRT types"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/vtc demo --out out/demo --force

# Fashion-MNIST for the accuracy tier: apt-get install -y dataset-fashion-mnist (needs root;
# otherwise prints the command to run by hand). lfw-subset and the photos ship with scikit-image.
data: $(STAMP)
	$(BIN)/vtc data install fashion-mnist

# The suite starts a few hundred Python processes: it writes bytecode even where the
# environment sets PYTHONDONTWRITEBYTECODE (tests/conftest.py does the same for a bare
# `python -m pytest`), so that only the first process compiles torch and vtc.
test: $(STAMP)
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest

bench: $(STAMP) data
	$(BIN)/python -m bench.run

# issue 9's GPU table (onnxruntime-gpu on a CUDA machine: make bench-gpu ORT=onnxruntime-gpu);
# without the CUDA execution provider it says so and exits 0.
bench-gpu: $(STAMP)
	$(BIN)/python -m bench.gpu

lint: $(STAMP)
	$(BIN)/ruff check vtc tests bench
	$(BIN)/mypy vtc bench

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
