"""The outputs stage: what the user gets from Records.

base.py (the Output/Sink protocol), raw.py (text and JSON byte views),
decoded.py (decoded transactions as lines or JSON), stats.py (the --stats
table), pcapng.py (the pcapng writer: synthetic TCP/UDP flows for Wireshark).

May import: usniff.decoders, usniff.streams, usniff.formats, usniff.events,
usniff.printable, usniff._events (Records and Packed records in C).  Nothing
of capture or the CLI.
"""
