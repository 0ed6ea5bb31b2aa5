"""File formats shared by a writer and a reader (pcapng: outputs/pcapng.py writes it,
cli/read.py reads it back).

May import: usniff.events only (a format says how Records are laid out in a file;
it knows nothing of capture, decoders or outputs).
"""
