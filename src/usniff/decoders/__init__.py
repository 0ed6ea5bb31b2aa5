"""The decoders stage: sans-IO protocol decoders and the engine that runs them.

One module per protocol (resp, mysql, postgres, http, memcached, fastcgi),
base.py (the Decoder protocol, Transaction and Notice), detect.py (the
first-bytes detectors), registry.py (every protocol declared once) and
engine.py (Records -> streams -> decoder events, with protocol detection).

May import: usniff.streams, usniff.events.  Nothing of capture, outputs or the CLI.
"""
