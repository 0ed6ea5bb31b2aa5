"""The capture stage: BPF programs in, Records out.

libbpf.py (+ _libbpf.c) binds libbpf; collector.py loads the BPF object
(bpf/usniff.bpf.o), picks a backend, programs the filters and drains the ring
(ringbuf.py) into a RecordAssembler (records.py), which turns ring records into
:class:`usniff.events.Record` batches; sockets.py asks the kernel (sock_diag,
/proc) about Unix sockets.

May import: usniff.events, usniff.printable, usniff._events (Records and Packed
records in C).  Nothing of streams, decoders, outputs or the CLI.
"""
