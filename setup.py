"""Only the C extension: everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # the collector's per-record hot path (required; see the file's top comment)
        Extension(
            "usniff._fastpath",
            ["src/usniff/_fastpath.c"],
            include_dirs=["ebpf"],  # usniff.h: the ring record layout
            depends=["ebpf/usniff.h"],
            extra_compile_args=["-Wall"],
        ),
    ]
)
