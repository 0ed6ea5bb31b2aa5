"""The C extensions and the BPF object: everything else is in pyproject.toml."""

import subprocess

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):  # type: ignore[misc]
    """Compile the BPF object (`make bpf`: clang, bpftool) before the package data is copied."""

    def run(self) -> None:
        subprocess.run(["make", "bpf"], check=True)
        super().run()


setup(
    cmdclass={"build_py": BuildPy},
    ext_modules=[
        # the collector's per-record hot path (required; see the file's top comment)
        Extension(
            "usniff._fastpath",
            ["src/usniff/_fastpath.c"],
            include_dirs=["ebpf"],  # usniff.h: the ring record layout
            depends=["ebpf/usniff.h"],
            extra_compile_args=["-Wall"],
        ),
        # linked against libbpf.so.1, which `auditwheel repair` then copies into the wheel
        Extension(
            "usniff.capture._libbpf",
            ["src/usniff/capture/_libbpf.c"],
            libraries=["bpf"],
            extra_compile_args=["-Wall"],
        ),
    ],
)
