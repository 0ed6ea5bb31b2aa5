"""Thin typed ctypes binding over libbpf (>= 1.0).

The libbpf used is the wheel's own: ``usniff.capture._libbpf`` is linked against it
and ``auditwheel repair`` copies it into the wheel (``_libbpf.c``).  Where
that module is missing or cannot load (a source tree without the extension
built), the system's ``libbpf.so.1`` is used if it is 1.0 or newer.

Only what usniff needs: open an object file, choose which programs load,
size maps, load, attach, update/lookup map elements.  libbpf's own log is
routed to a Python callback (``--verbose``).  The ring buffer is *not*
consumed through libbpf's per-record callback (see ``usniff.capture.ringbuf``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path

c_void_p = ctypes.c_void_p
NEEDED = (1, 0)  # libbpf 1.0: NULL/-errno returns everywhere, bpf_object__next_program


class LibbpfError(Exception):
    """A libbpf call failed; ``errno`` holds the positive error number."""

    def __init__(self, what: str, errno: int) -> None:
        super().__init__(f"{what}: {os.strerror(errno)} (errno {errno})")
        self.errno = errno


def _load() -> ctypes.CDLL:
    try:
        from . import _libbpf
    except ImportError:
        pass
    else:
        return checked(_libbpf.__file__)
    for name in ("libbpf.so.1", ctypes.util.find_library("bpf") or ""):
        if not name:
            continue
        try:
            return checked(name)
        except FileNotFoundError:
            continue
    raise OSError(
        "libbpf not found: install usniff from its wheel (which carries libbpf), "
        f"or libbpf {NEEDED[0]}.{NEEDED[1]} or newer (Debian/Ubuntu: apt-get install libbpf1)"
    )


def checked(name: str) -> ctypes.CDLL:
    """dlopen ``name``; refuse (OSError) a libbpf older than NEEDED, naming its version."""
    try:
        b = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise FileNotFoundError(str(e)) from None
    try:
        version = (int(b.libbpf_major_version()), int(b.libbpf_minor_version()))
    except AttributeError:  # libbpf_major_version came with 0.6
        found = _mapped_version(Path(name).name) or "older than 0.6"
    else:
        if version >= NEEDED:
            return b
        found = f"{version[0]}.{version[1]}"
    raise OSError(
        f"libbpf {found} ({name}) is too old: usniff needs libbpf {NEEDED[0]}.{NEEDED[1]} "
        "or newer. Install usniff from its wheel (which carries its own libbpf), "
        "or a newer libbpf from your distribution's backports"
    )


def _mapped_version(soname: str) -> str | None:
    """The version in the name of the file mapped for ``soname`` (libbpf.so.0 -> 0.3.0)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        name = line.rsplit("/", 1)[-1]
        if name.startswith(soname) and name.startswith("libbpf.so."):
            return name.removeprefix("libbpf.so.")
    return None


_lib: ctypes.CDLL | None = None
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, c_void_p)
_print_cb: object = None  # keeps the ctypes callback alive


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = _load()
        _declare(_lib)
    return _lib


def _declare(b: ctypes.CDLL) -> None:
    sigs: dict[str, tuple[object, list[object]]] = {
        "bpf_object__open_file": (c_void_p, [ctypes.c_char_p, c_void_p]),
        "bpf_object__load": (ctypes.c_int, [c_void_p]),
        "bpf_object__close": (None, [c_void_p]),
        "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
        "bpf_object__find_map_by_name": (c_void_p, [c_void_p, ctypes.c_char_p]),
        "bpf_program__name": (ctypes.c_char_p, [c_void_p]),
        "bpf_program__section_name": (ctypes.c_char_p, [c_void_p]),
        "bpf_program__set_autoload": (ctypes.c_int, [c_void_p, ctypes.c_bool]),
        "bpf_program__autoload": (ctypes.c_bool, [c_void_p]),
        "bpf_program__attach": (c_void_p, [c_void_p]),
        "bpf_program__attach_perf_event": (c_void_p, [c_void_p, ctypes.c_int]),
        "bpf_link__destroy": (ctypes.c_int, [c_void_p]),
        "bpf_map__fd": (ctypes.c_int, [c_void_p]),
        "bpf_map__set_max_entries": (ctypes.c_int, [c_void_p, ctypes.c_uint32]),
        "bpf_map__set_autocreate": (ctypes.c_int, [c_void_p, ctypes.c_bool]),
        "bpf_map__max_entries": (ctypes.c_uint32, [c_void_p]),
        "bpf_map__update_elem": (
            ctypes.c_int,
            [c_void_p, c_void_p, ctypes.c_size_t, c_void_p, ctypes.c_size_t, ctypes.c_uint64],
        ),
        "bpf_map__lookup_elem": (
            ctypes.c_int,
            [c_void_p, c_void_p, ctypes.c_size_t, c_void_p, ctypes.c_size_t, ctypes.c_uint64],
        ),
        "bpf_map__get_next_key": (
            ctypes.c_int,
            [c_void_p, c_void_p, c_void_p, ctypes.c_size_t],
        ),
        "libbpf_num_possible_cpus": (ctypes.c_int, []),
        "libbpf_probe_bpf_helper": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, c_void_p]),
        "libbpf_probe_bpf_map_type": (ctypes.c_int, [ctypes.c_int, c_void_p]),
        "libbpf_set_print": (c_void_p, [_PRINT_FN]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(b, name)
        fn.restype = restype
        fn.argtypes = argtypes


def set_log(callback: Callable[[int, str], None] | None) -> None:
    """Route libbpf's messages (level 0 warn, 1 info, 2 debug) to ``callback``.

    ``None`` silences libbpf without formatting anything (a failed load logs
    megabytes of verifier output).
    """
    global _print_cb
    libc = ctypes.CDLL(None)
    vsnprintf = libc.vsnprintf
    vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, c_void_p]
    buf = ctypes.create_string_buffer(1 << 24) if callback is not None else None

    def _print(level: int, fmt: bytes | None, args: int | None) -> int:
        if callback is not None and buf is not None and fmt is not None:
            vsnprintf(buf, len(buf), fmt, args)
            callback(level, buf.value.decode(errors="replace").rstrip("\n"))
        return 0

    _print_cb = _PRINT_FN(_print)
    lib().libbpf_set_print(_print_cb)


def _check_ptr(ptr: int | None, what: str) -> int:
    if not ptr:
        raise LibbpfError(what, ctypes.get_errno() or 22)
    return ptr


def _check_rc(rc: int, what: str) -> None:
    if rc < 0:
        raise LibbpfError(what, -rc)


class Map:
    def __init__(self, ptr: int, name: str) -> None:
        self._ptr = ptr
        self.name = name

    @property
    def fd(self) -> int:
        return int(lib().bpf_map__fd(self._ptr))

    @property
    def max_entries(self) -> int:
        return int(lib().bpf_map__max_entries(self._ptr))

    def set_max_entries(self, n: int) -> None:
        _check_rc(lib().bpf_map__set_max_entries(self._ptr, n), f"resize map {self.name}")

    def set_autocreate(self, on: bool) -> None:
        """Whether load() creates this map (off: a map only programs not loaded use)."""
        _check_rc(lib().bpf_map__set_autocreate(self._ptr, on), f"autocreate map {self.name}")

    def update(self, key: bytes, value: bytes) -> None:
        rc = lib().bpf_map__update_elem(self._ptr, key, len(key), value, len(value), 0)
        _check_rc(rc, f"update map {self.name}")

    def lookup(self, key: bytes, value_size: int) -> bytes:
        buf = ctypes.create_string_buffer(value_size)
        rc = lib().bpf_map__lookup_elem(self._ptr, key, len(key), buf, value_size, 0)
        _check_rc(rc, f"lookup map {self.name}")
        return buf.raw

    def keys(self, key_size: int) -> Iterator[bytes]:
        """Every key in a hash map (keys deleted meanwhile may be skipped)."""
        cur: bytes | None = None
        nxt = ctypes.create_string_buffer(key_size)
        while lib().bpf_map__get_next_key(self._ptr, cur, nxt, key_size) == 0:
            cur = nxt.raw
            yield cur


class Program:
    def __init__(self, ptr: int) -> None:
        self._ptr = ptr
        self.name: str = (lib().bpf_program__name(ptr) or b"").decode()
        self.section: str = (lib().bpf_program__section_name(ptr) or b"").decode()

    def set_autoload(self, on: bool) -> None:
        _check_rc(lib().bpf_program__set_autoload(self._ptr, on), f"autoload {self.name}")

    @property
    def autoload(self) -> bool:
        return bool(lib().bpf_program__autoload(self._ptr))

    def attach(self) -> Link:
        ptr = lib().bpf_program__attach(self._ptr)
        return Link(_check_ptr(ptr, f"attach {self.section}"))

    def attach_perf_event(self, fd: int) -> Link:
        """Run on the perf event ``fd`` (a tracefs kprobe event); the link owns ``fd``."""
        ptr = lib().bpf_program__attach_perf_event(self._ptr, fd)
        if not ptr:
            e = ctypes.get_errno() or 22
            os.close(fd)
            raise LibbpfError(f"attach {self.section}", e)
        return Link(ptr)


class Link:
    def __init__(self, ptr: int) -> None:
        self._ptr: int | None = ptr

    def destroy(self) -> None:
        if self._ptr:
            lib().bpf_link__destroy(self._ptr)
            self._ptr = None


class Object:
    """A BPF object file; ``with Object(path) as obj: ...`` closes it."""

    def __init__(self, path: str) -> None:
        ptr = lib().bpf_object__open_file(path.encode(), None)
        self._ptr: int | None = _check_ptr(ptr, f"open {path}")
        self._links: list[Link] = []

    def programs(self) -> Iterator[Program]:
        prog = lib().bpf_object__next_program(self._ptr, None)
        while prog:
            yield Program(prog)
            prog = lib().bpf_object__next_program(self._ptr, prog)

    def map(self, name: str) -> Map:
        ptr = lib().bpf_object__find_map_by_name(self._ptr, name.encode())
        return Map(_check_ptr(ptr, f"find map {name}"), name)

    def load(self) -> None:
        _check_rc(lib().bpf_object__load(self._ptr), "load BPF object")

    def attach(self, perf_event: Callable[[Program], int | None] | None = None) -> None:
        """Attach the programs that load; ``perf_event(prog)``, if given, may name the
        fd of a perf event to run ``prog`` on instead of its section's own hook."""
        for prog in self.programs():
            if prog.autoload:
                fd = perf_event(prog) if perf_event else None
                self._links.append(prog.attach() if fd is None else prog.attach_perf_event(fd))

    def detach(self) -> None:
        """Destroy the links attach() made: the programs stop running; maps stay."""
        for link in self._links:
            link.destroy()
        self._links.clear()

    def close(self) -> None:
        self.detach()
        if self._ptr:
            lib().bpf_object__close(self._ptr)
            self._ptr = None

    def __enter__(self) -> Object:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _probe_result(rc: int) -> bool | None:
    return None if rc < 0 else rc > 0


def has_helper(prog_type: int, helper: int) -> bool | None:
    """Whether the kernel lets programs of ``prog_type`` call ``helper`` (a test load
    by libbpf); None when the probe itself failed (no permission, seccomp...)."""
    return _probe_result(lib().libbpf_probe_bpf_helper(prog_type, helper, None))


def has_map_type(map_type: int) -> bool | None:
    """Whether the kernel creates maps of ``map_type`` (a test creation); None: unknown."""
    return _probe_result(lib().libbpf_probe_bpf_map_type(map_type, None))


def num_possible_cpus() -> int:
    return int(lib().libbpf_num_possible_cpus())
