"""Records and Packed records in C (_events.c): the C side of events.py."""

from usniff.events import Record

class Packed:
    """A data record for the pcapng output (Assembler.packed); its payload is the buffer."""

    @property
    def ts(self) -> float: ...
    @property
    def inode(self) -> int: ...
    def record(self) -> Record:
        """The equivalent Record."""
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int) -> memoryview: ...
