"""libbpf, linked for usniff.capture.libbpf (_libbpf.c)."""

def version() -> str:
    """The linked libbpf's version, as "v1.1"."""
