# pykata: `make demo` and `make test` work on a fresh Debian 12 machine (as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMPS := .stamps
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# Debian packages pykata needs on the host (and to build the guest image).
APT_PACKAGES := qemu-system-x86 qemu-utils busybox-static lz4 erofs-utils e2fsprogs cpio kmod \
	python3.11 containerd runc containernetworking-plugins podman iproute2 tmux docker.io \
	build-essential bc bison flex libelf-dev  # to build the guest kernel from linux-source

.PHONY: setup apt venv image test lint demo protos clean bench

setup: apt venv image

apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt-get install $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(STAMPS)/venv

$(STAMPS)/venv: pyproject.toml
	@mkdir -p $(STAMPS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

# The guest kernel (pykata's minimal kernel, built from Debian's linux-source-6.1: ~6 min on 2 cores
# the first time) and the initrd with the agent, in /var/cache/pykata; each cached by a hash of its
# inputs, rebuilt only when those change. Debian's kernels: `kata-runtime image build --flavour cloud`.
image: apt venv
	@apt-cache show --no-all-versions linux-source-6.1 >/dev/null 2>&1 || apt-get update -qq
	$(VENV)/bin/kata-runtime image build --quiet --rootfs-image erofs  # + the DAX rootfs image and its boot initrd

lint: venv
	$(VENV)/bin/ruff check src tests tools bench
	$(VENV)/bin/mypy
	$(if $(wildcard bench/*.py),$(VENV)/bin/mypy bench)

# pytest exits 5 when it collected no test: that is not a failure of the suite.
test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

demo: setup
	kata-runtime check
	$(PY) tools/demo.py

# Benchmarks (issue #9): each prints its tables and writes docs/bench/NAME.json + NAME.png. They boot VMs,
# so each runs under the VM lock the VM tests take; run on a quiet machine (2 cores, TCG). BENCH_ARGS is
# passed to every bench, e.g. BENCH_ARGS=--no-write for a look without touching docs/bench.
VM_LOCK := flock /tmp/pykata-vm.lock
bench: setup
	$(VM_LOCK) $(PY) bench/start_latency.py --runs 10 $(BENCH_ARGS)
	$(VM_LOCK) $(PY) bench/footprint.py --counts 1,5,10 $(BENCH_ARGS)
	$(VM_LOCK) $(PY) bench/footprint.py --counts 10 --memory 0 --name footprint-default $(BENCH_ARGS)
	$(VM_LOCK) $(PY) bench/concurrency.py --count 10 --runs 3 $(BENCH_ARGS)
	$(VM_LOCK) $(PY) bench/exec_latency.py --runs 20 $(BENCH_ARGS)
	$(VM_LOCK) $(PY) bench/sharedfs.py --runs 3 $(BENCH_ARGS)

protos: venv
	$(PY) tools/genprotos.py

clean:
	rm -rf $(VENV) $(STAMPS) build src/*.egg-info
