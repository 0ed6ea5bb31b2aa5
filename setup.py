"""The C extensions and the BPF object: everything else is in pyproject.toml."""

import subprocess

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):  # type: ignore[misc]
    """Compile the BPF object (`make bpf`: clang, bpftool) before the package data is copied."""

    def run(self) -> None:
        subprocess.run(["make", "bpf"], check=True)
        super().run()


def hot_path(name: str, source: str) -> Extension:
    """A C module of the per-record hot path (required; see the file's top comment), on
    ebpf/usniff.h (the ring record layout) and src/usniff/_events.h (the C side of events.py)."""
    return Extension(
        name,
        [source],
        include_dirs=["ebpf", "src/usniff"],
        depends=["ebpf/usniff.h", "src/usniff/_events.h"],
        libraries=["m"],
        extra_compile_args=["-Wall"],
    )


setup(
    cmdclass={"build_py": BuildPy},
    ext_modules=[
        hot_path("usniff._events", "src/usniff/_events.c"),  # Records and Packed records
        hot_path("usniff.capture._records", "src/usniff/capture/_records.c"),  # record assembly
        hot_path("usniff.outputs._epb", "src/usniff/outputs/_epb.c"),  # pcapng packet encoder
        hot_path("usniff.outputs._fast", "src/usniff/outputs/_fast.c"),  # --stats in C (RESP)
        # linked against libbpf.so.1, which `auditwheel repair` then copies into the wheel
        Extension(
            "usniff.capture._libbpf",
            ["src/usniff/capture/_libbpf.c"],
            libraries=["bpf"],
            extra_compile_args=["-Wall"],
        ),
    ],
)
