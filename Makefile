# usniff build and test entry points (the README names them).
PYTHON ?= .venv/bin/python
CLANG ?= clang
LLVM_STRIP ?= llvm-strip
BPFTOOL ?= $(shell command -v bpftool || echo /usr/sbin/bpftool)
ARCH := $(shell uname -m | sed 's/x86_64/x86/;s/aarch64/arm64/')
# A packager builds once on any BTF kernel (or with VMLINUX_BTF=path/to/vmlinux);
# CO-RE relocates the object on every kernel it loads on.
VMLINUX_BTF ?= /sys/kernel/btf/vmlinux
BPF_OBJ := src/usniff/capture/bpf/usniff.bpf.o
BPF_CFLAGS := -g -O2 -target bpf -mcpu=v3
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
PODMAN ?= podman
IMAGE ?= usniff:$(VERSION)
IMAGE_BASE ?= debian:bookworm-slim

.PHONY: all bpf wheel wheelhouse image test test-install test-fast lint bench clean

all: bpf

bpf: $(BPF_OBJ)

ebpf/vmlinux.h:
	$(BPFTOOL) btf dump file $(VMLINUX_BTF) format c > $@.tmp && mv $@.tmp $@

# -g makes the BTF that CO-RE relocates with; llvm-strip -g then drops only the
# DWARF (966 KB -> the size the wheel ships), keeping .BTF and .BTF.ext.
$(BPF_OBJ): ebpf/usniff.bpf.c ebpf/usniff.h ebpf/vmlinux.h
	@mkdir -p $(dir $@)
	$(CLANG) $(BPF_CFLAGS) -D__TARGET_ARCH_$(ARCH) -Iebpf -fdebug-prefix-map=$(CURDIR)=. -c $< -o $@.tmp
	$(LLVM_STRIP) -g $@.tmp && mv $@.tmp $@

# What a production user installs: dist/usniff-*.tar.gz (with the BPF sources) and
# dist/usniff-*-manylinux_*.whl, which carries the stripped BPF object and its own
# libbpf (auditwheel copies libbpf.so.1, libelf and zlib in), so pip installs it on a
# machine with neither a compiler nor libbpf. Built from the sdist, as an index would;
# the same commit gives the same wheel bytes (SOURCE_DATE_EPOCH, no debug paths, no
# build-host RUNPATH: LDSHARED replaces an interpreter's own -rpath, as pyenv's adds).
# The libelf bundled is Debian 11's (tests/vm/fetch_libelf.py says why), which makes the
# wheel manylinux_2_28; WHEEL_LIBELF= (empty) bundles the build host's instead.
WHEEL_LIBELF ?= tests/vm/cache/libelf-bullseye
wheel: export SOURCE_DATE_EPOCH := $(shell git log -1 --format=%ct 2>/dev/null || echo 315532800)
wheel: $(if $(WHEEL_LIBELF),$(WHEEL_LIBELF)/libelf.so.1)
	rm -rf dist
	LDSHARED="$(CC) -shared" CFLAGS="-g0" $(PYTHON) -m build --outdir dist/raw .
	PATH="$(abspath $(dir $(PYTHON))):$$PATH" $(if $(WHEEL_LIBELF),LD_LIBRARY_PATH=$(abspath $(WHEEL_LIBELF))) \
		$(PYTHON) -m auditwheel repair --wheel-dir dist dist/raw/*.whl
	mv dist/raw/*.tar.gz dist/ && rm -rf dist/raw

tests/vm/cache/libelf-bullseye/libelf.so.1:
	$(PYTHON) tests/vm/fetch_libelf.py $(dir $@)

# dist/wheels: the wheel and its dependencies' wheels (for this interpreter's version),
# to install with `pip install --no-index --find-links dist/wheels usniff`.
wheelhouse:
	rm -rf dist/wheels
	$(PYTHON) -m pip download -q --dest dist/wheels --only-binary=:all: dist/usniff-*-manylinux_*.whl

# The container image (Containerfile) from the wheel: IMAGE_BASE needs python3 3.11.
image: wheel wheelhouse
	$(PODMAN) build -f Containerfile --build-arg BASE=$(IMAGE_BASE) -t $(IMAGE) dist

# The README's test command: everything, live capture included (needs root).
test: bpf
	$(PYTHON) -m pytest -q tests --ignore=tests/install

# The wheel from a clean clone, installed and capturing in minimal Debian root file
# systems (tests/install; root; debootstrap once, cached in tests/install/cache).
test-install:
	$(PYTHON) -m pytest -q tests/install --durations=10

test-fast:
	$(PYTHON) -m pytest -q tests -m "not root" --ignore=tests/install

lint:
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy

bench:
	$(PYTHON) -m bench

clean:
	rm -rf ebpf/vmlinux.h $(BPF_OBJ) dist

# Live tests on stock Debian kernels in QEMU guests (tests/vm, docs/kernel-matrix.md).
include tests/vm/Makefile.inc
test-kernels: bpf
