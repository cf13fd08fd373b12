# sealtrail: every entry point bootstraps what it needs, idempotently.
#   make run    build + the agent and a collector on loopback (packaging/run-local.sh)
#   make watch  build + stream live events (sealtrail watch)
#   make test   build + the whole test suite (lint, types, unit, kernel e2e)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BUILD := build
OBJDIR := agent/kernel/obj
# chromium: the headless browser tests/report renders sealtrail report's page in
APT_PACKAGES := clang llvm libbpf-dev libbpf1 bpftool gcc libssl-dev postgresql libsystemd-dev pkg-config patchelf chromium
PROBES := $(wildcard probes/*.bpf.c)
# events-compat: events.bpf.c for kernels without bpf_rdonly_cast (before 6.2; agent/events/stream.py)
OBJECTS := $(patsubst probes/%.bpf.c,$(OBJDIR)/%.bpf.o,$(PROBES)) $(OBJDIR)/events-compat.bpf.o
BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_x86 -Wall -Werror -I$(BUILD) -Iprobes

.PHONY: all bootstrap apt venv probes native tracefs run test lint unit kernel bench clean

all: bootstrap

bootstrap: apt venv probes native tracefs

# Install only what is missing: a second run asks apt nothing.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if ! $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null; then missing="$$missing python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
	    echo "bootstrap: installing $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	# a second C2SP implementation for tests/witness/test_c2sp.py; it declares Python >= 3.12
	# but runs on 3.11 (tests/witness/test_c2sp.py uses it), so it is installed without that check
	$(VENV)/bin/pip install -q --no-deps --ignore-requires-python aics-tlog==0.2.1
	touch $@

probes: $(OBJECTS)

# vmlinux.h comes from the build host's BTF; CO-RE relocates field offsets at load time.
$(BUILD)/vmlinux.h:
	mkdir -p $(BUILD)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

$(OBJDIR)/%.bpf.o: probes/%.bpf.c probes/sealtrail.h probes/common.h $(BUILD)/vmlinux.h
	mkdir -p $(OBJDIR)
	clang $(BPF_CFLAGS) -c $< -o $@.tmp && mv $@.tmp $@

$(OBJDIR)/events-compat.bpf.o: probes/events.bpf.c probes/sealtrail.h probes/common.h $(BUILD)/vmlinux.h
	mkdir -p $(OBJDIR)
	clang $(BPF_CFLAGS) -DST_COMPAT -c $< -o $@.tmp && mv $@.tmp $@

# The native core (journal chain and verify fast path, kernel record encoder, ring-buffer sample
# sink); agent/native/ loads it and checks it against its mirror (agent/native/layout.py).
NATIVE_LIB := agent/native/lib/libsealtrail.so
NATIVE_CFLAGS := -O2 -g -fPIC -shared -Wall -Wextra -Werror -Wno-deprecated-declarations
native: $(NATIVE_LIB)

NATIVE_SRC := $(wildcard native/*.c)
$(NATIVE_LIB): $(NATIVE_SRC) native/stnative.h probes/sealtrail.h
	mkdir -p $(dir $@)
	gcc $(NATIVE_CFLAGS) $(NATIVE_SRC) -o $@.tmp -lcrypto && mv $@.tmp $@

# Fuzz the verifier's fast path under ASan/UBSan (not part of `make test`: it runs until told).
FUZZ_SECONDS ?= 60
.PHONY: fuzz-native
fuzz-native:
	mkdir -p $(BUILD)/fuzz/corpus && cp native/fuzz/seed-* $(BUILD)/fuzz/corpus/
	clang -g -O1 -fsanitize=fuzzer,address,undefined -Wno-deprecated-declarations \
	    native/fuzz/fuzz_verify.c native/stjournal.c -o $(BUILD)/fuzz/fuzz_verify -lcrypto
	$(BUILD)/fuzz/fuzz_verify -max_total_time=$(FUZZ_SECONDS) -max_len=4096 $(BUILD)/fuzz/corpus

tracefs:
	@mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing

# The whole product, no package or systemd: agent (example policies, monitor mode), collector
# on loopback, the commands to look at them; state in build/run (packaging/run-local.sh).
run: bootstrap
	packaging/run-local.sh

# Live events only (ARGS="--only exec,connect" passes arguments on).
.PHONY: watch
watch: bootstrap
	$(VENV)/bin/sealtrail watch $(ARGS)

lint: venv
	$(VENV)/bin/ruff check agent tests bench
	$(VENV)/bin/ruff format --check agent tests bench
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -q tests/unit

test: bootstrap lint
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(BENCH_APT_PACKAGES)"
	$(VENV)/bin/pytest -q tests
	$(MAKE) test-vm
	$(MAKE) test-packaging

# Stock-kernel VM (Debian 12, qemu TCG): BPF-LSM and the kernel suites on another kernel.
# tests/vm/run.sh installs its own host packages (qemu-system-x86 debootstrap e2fsprogs).
.PHONY: test-vm
test-vm: venv probes native
	tests/vm/run.sh

# The .deb (packaging/build-deb.sh, docs/packaging.md): a venv over Debian's python3 at
# /opt/sealtrail with the probes and the native core, the units, the baseline policies in monitor
# mode. Rebuilt when what goes in changes; output in build/deb/.
DEB_APT_PACKAGES := python3-venv libsystemd-dev pkg-config binutils
DEB_INPUTS := pyproject.toml README.md $(OBJECTS) $(NATIVE_LIB) \
    $(shell find agent packaging policies docs -type f -not -path '*/__pycache__/*' 2>/dev/null)
.PHONY: deb
deb: $(BUILD)/deb/.built
$(BUILD)/deb/.built: $(DEB_INPUTS)
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(DEB_APT_PACKAGES)"
	packaging/build-deb.sh $(BUILD)/deb
	touch $@

# Packaging e2e (DESIGN.md 7, tier 4): the .deb under real systemd (systemd-nspawn --boot on a
# debootstrapped Debian 12, cached in build/packaging), lintian, piuparts, the Vagrantfile's syntax.
PACKAGING_APT_PACKAGES := debootstrap systemd-container lintian piuparts ruby
.PHONY: test-packaging
test-packaging: deb venv tracefs
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(PACKAGING_APT_PACKAGES)"
	ruby -c vagrant/Vagrantfile
	lintian --fail-on error,warning $(BUILD)/deb/sealtrail_*_amd64.deb
	tests/packaging/piuparts.sh $(BUILD)/deb/sealtrail_*_amd64.deb
	SEALTRAIL_PACKAGING=1 $(VENV)/bin/pytest -q -s tests/packaging

# sealtrail against auditd and journald's Forward Secure Sealing in one run (bench/suite):
# report, charts and raw JSON in bench/results/ (12 min here). bench-smoke: every configuration
# once with tiny counts, output in build/bench/smoke (tests/bench runs it in `make test`).
# The single-purpose scripts: python -m bench (bench/README.md).
BENCH_APT_PACKAGES := auditd systemd-journal-remote
.PHONY: bench-smoke
bench: bootstrap
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(BENCH_APT_PACKAGES)"
	$(VENV)/bin/python -m bench.suite $(ARGS)

bench-smoke: bootstrap
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(BENCH_APT_PACKAGES)"
	$(VENV)/bin/python -m bench.suite --smoke --out $(BUILD)/bench/smoke

clean:
	rm -rf $(BUILD) $(OBJDIR) $(NATIVE_LIB)
