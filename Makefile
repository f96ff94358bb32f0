# The two commands that do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-min setup fashion-mnist chromium lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Installs the package (editable) and the test tools at the exact tested versions
# (constraints.txt); pyproject.toml declares the ranges a user's environment may hold.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test,codec,heif,nvimgcodec,hf]'
	touch $@

setup: $(VENV)/.installed

# Fashion-MNIST from Debian (the tests use it as real data).
fashion-mnist:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi

# Debian's chromium, driven by Playwright in the explorer's browser tests.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; \
	fi

demo:
	@echo "make demo: one-time set-up (~1.5 min), then training and every analysis (~2.5 min on 2 CPU cores); report in runs/demo/index.html"
	@$(MAKE) --no-print-directory setup
	$(BIN)/zfnet demo --out runs/demo

# Two workers (pytest-xdist) of one thread each: see tests/conftest.py.
TESTFLAGS ?= -n 2 --dist worksteal

test: setup fashion-mnist chromium
	$(BIN)/python -m pytest -q $(TESTFLAGS)

# The lower ends of the dependency ranges, together (constraints-min.txt), in .venv-min:
# several GB of downloads the first time (torch 2.9 is a CUDA build on x86_64).
test-min: fashion-mnist chromium
	[ -x .venv-min/bin/python ] || $(PY) -m venv .venv-min
	.venv-min/bin/pip install -q -c constraints-min.txt -e '.[test]'
	.venv-min/bin/python -m pytest -q $(TESTFLAGS)

lint: setup
	$(BIN)/ruff check src tests bench

clean:
	rm -rf runs build dist src/*.egg-info
