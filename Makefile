# The two commands that do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test setup fashion-mnist lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Installs the package (editable) with its pinned dependencies and the test tools.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# Fashion-MNIST from Debian (the tests use it as real data).
fashion-mnist:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi

demo: setup
	$(BIN)/zfnet demo --out runs/demo

test: setup fashion-mnist
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests bench

clean:
	rm -rf runs build dist src/*.egg-info
