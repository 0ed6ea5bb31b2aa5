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
        # Records and Packed records, the C API of the two below (see the file's top comment)
        Extension(
            "usniff._events",
            ["src/usniff/_events.c"],
            include_dirs=["ebpf", "src/usniff"],  # usniff.h: the ring record; _events.h
            depends=["ebpf/usniff.h", "src/usniff/_events.h"],
            extra_compile_args=["-Wall"],
        ),
        # the capture stage's record assembly and ring walk (required; see the file's top comment)
        Extension(
            "usniff.capture._records",
            ["src/usniff/capture/_records.c"],
            include_dirs=["ebpf", "src/usniff"],  # usniff.h: the ring record; _events.h
            depends=["ebpf/usniff.h", "src/usniff/_events.h"],
            extra_compile_args=["-Wall"],
        ),
        # the pcapng output's packet encoder (required; see the file's top comment)
        Extension(
            "usniff.outputs._epb",
            ["src/usniff/outputs/_epb.c"],
            include_dirs=["ebpf", "src/usniff"],
            depends=["ebpf/usniff.h", "src/usniff/_events.h"],
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
