"""libbpf, linked for usniff.libbpf (_libbpf.c)."""

def version() -> str:
    """The linked libbpf's version, as "v1.1"."""
