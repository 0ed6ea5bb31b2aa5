# usniff build and test entry points (the README names them).
PYTHON ?= .venv/bin/python
CLANG ?= clang
BPFTOOL ?= $(shell command -v bpftool || echo /usr/sbin/bpftool)
ARCH := $(shell uname -m | sed 's/x86_64/x86/;s/aarch64/arm64/')
# A packager builds once on any BTF kernel (or with VMLINUX_BTF=path/to/vmlinux);
# CO-RE relocates the object on every kernel it loads on.
VMLINUX_BTF ?= /sys/kernel/btf/vmlinux
BPF_OBJ := src/usniff/bpf/usniff.bpf.o

.PHONY: all bpf test test-fast lint bench clean

all: bpf

bpf: $(BPF_OBJ)

ebpf/vmlinux.h:
	$(BPFTOOL) btf dump file $(VMLINUX_BTF) format c > $@.tmp && mv $@.tmp $@

$(BPF_OBJ): ebpf/usniff.bpf.c ebpf/usniff.h ebpf/vmlinux.h
	@mkdir -p $(dir $@)
	$(CLANG) -g -O2 -target bpf -mcpu=v3 -D__TARGET_ARCH_$(ARCH) -Iebpf -c $< -o $@

# The README's test command: everything, live capture included (needs root).
test: bpf
	$(PYTHON) -m pytest -q tests

test-fast:
	$(PYTHON) -m pytest -q tests -m "not root"

lint:
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy

bench:
	$(PYTHON) -m bench

clean:
	rm -f ebpf/vmlinux.h $(BPF_OBJ)

# Live tests on stock Debian kernels in QEMU guests (tests/vm, docs/kernel-matrix.md).
include tests/vm/Makefile.inc
test-kernels: bpf
