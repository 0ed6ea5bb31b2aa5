"""The command line: where the stages are put together.

main.py is the click CLI (``usniff``, ``usniff list``, ``usniff read``,
``usniff extcap``); loop.py the capture loop (a Capture's batches to the
outputs, -c, --duration, signals); read.py reads pcap/pcapng files back into
Records; extcap.py is the Wireshark extcap.

May import: every stage (usniff.capture, usniff.streams, usniff.decoders,
usniff.outputs, usniff.formats, usniff.events, usniff.printable).
"""
