"""Kernel capability probe, run inside the guest: can the kernel load and attach the
program kinds usniff's backends rely on, and do they fire on a Unix socket send
(and its receipt)?

    python tests/vm/guest/probe.py OBJECT [--json OUT] [KIND...]

Loads each program of probe.bpf.c (or those of the KINDs given) on its own through
the host's libbpf (ctypes), attaches it, sends and receives on a socketpair and
reads its counter.  Prints one line per program; --json writes {kind: "ok" | "error: ..."}.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import socket
import sys
from pathlib import Path

PROGRAMS = {  # kind reported -> (program name in probe.bpf.c, counter slot)
    "fentry": ("fexit_sendmsg", 0),
    "kprobe": ("kretprobe_sendmsg", 1),
    "tp_btf": ("tp_sock_send_length", 2),  # tp_btf/sock_send_length, kernel >= 6.3
    "skb_read": ("tp_skb_copy", 3),  # tp_btf/skb_copy_datagram_iovec (fires on the recv)
}

PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class Libbpf:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
        self.libc = ctypes.CDLL(None)
        for name in (
            "bpf_object__open_file",
            "bpf_object__find_program_by_name",
            "bpf_program__attach",
        ):
            getattr(self.lib, name).restype = ctypes.c_void_p
        self.lib.bpf_object__open_file.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        self.lib.bpf_object__find_program_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib.bpf_program__set_autoload.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        self.lib.bpf_object__load.argtypes = [ctypes.c_void_p]
        self.lib.bpf_program__attach.argtypes = [ctypes.c_void_p]
        self.lib.bpf_object__find_map_fd_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.bpf_link__destroy.argtypes = [ctypes.c_void_p]
        self.lib.bpf_object__close.argtypes = [ctypes.c_void_p]
        self.messages: list[str] = []
        self._printer = PRINT_FN(self._collect)  # keep a reference: libbpf holds the pointer
        self.lib.libbpf_set_print(self._printer)

    def _collect(self, level: int, fmt: bytes, args: int) -> int:
        buf = ctypes.create_string_buffer(8192)
        self.libc.vsnprintf(
            buf, ctypes.c_size_t(len(buf)), ctypes.c_char_p(fmt), ctypes.c_void_p(args)
        )
        self.messages.append(buf.value.decode(errors="replace").strip())
        return 0

    def failure(self, step: str, code: int = 0) -> str:
        """Why ``step`` failed: libbpf's return code or errno, and its last complaint."""
        reason = os.strerror(code or ctypes.get_errno())
        complaints = [m for m in self.messages if "fail" in m or "error" in m.lower()]
        return f"error: {step}: {reason}" + (f" ({complaints[0]})" if complaints else "")

    def probe(self, obj_path: str, program: str, slot: int) -> str:
        self.messages.clear()
        obj = self.lib.bpf_object__open_file(obj_path.encode(), None)
        if not obj:
            return self.failure("open")
        link = None
        try:
            for other, _ in PROGRAMS.values():
                prog = self.lib.bpf_object__find_program_by_name(obj, other.encode())
                self.lib.bpf_program__set_autoload(prog, other == program)
            code = self.lib.bpf_object__load(obj)
            if code < 0:
                return self.failure("load", -code)
            prog = self.lib.bpf_object__find_program_by_name(obj, program.encode())
            link = self.lib.bpf_program__attach(prog)
            if not link:
                return self.failure("attach")
            a, b = socket.socketpair()
            with a, b:
                for _ in range(3):
                    a.send(b"probe")
                    b.recv(16)
            key, value = ctypes.c_uint32(slot), ctypes.c_uint64()
            fd = self.lib.bpf_object__find_map_fd_by_name(obj, b"hits")
            self.lib.bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))
            return "ok" if value.value >= 3 else f"error: attached but fired {value.value}/3"
        finally:
            if link:
                self.lib.bpf_link__destroy(link)
            self.lib.bpf_object__close(obj)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("object", help="probe.bpf.o")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("kinds", nargs="*", help=f"any of {', '.join(PROGRAMS)} (default: all)")
    args = parser.parse_intermixed_args()
    kinds: list[str] = args.kinds or list(PROGRAMS)
    unknown = set(kinds) - set(PROGRAMS)
    if unknown:
        parser.error(f"unknown kinds {', '.join(sorted(unknown))}")
    libbpf = Libbpf()
    results = {kind: libbpf.probe(args.object, *PROGRAMS[kind]) for kind in kinds}
    for kind, result in results.items():
        print(f"probe {kind:<13} {result}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
