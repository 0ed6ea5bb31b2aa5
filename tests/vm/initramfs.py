"""Build the guest's initramfs: busybox, the /init scripts and the few modules that
mount the host's root over 9p.

The archive is an uncompressed newc cpio (the kernel unpacks that fastest under
TCG) with fixed owners and timestamps, so the same inputs give the same bytes.
It is written to ``tests/vm/cache/<release>/initramfs.cpio``.
"""

from __future__ import annotations

import lzma
from pathlib import Path

from kernels import VM_DIR, Kernel

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
SCRIPTS = VM_DIR / "initramfs"  # init (stage 1) and stage2

# What /init needs, by module name; built-in ones are skipped, dependencies added.
# unix_diag: what `ss -x` and `usniff list` use (autoloaded on a real system)
MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay", "unix_diag")


def module_load_order(kernel: Kernel) -> list[Path]:
    """Paths (relative to the module tree) of MODULES and their dependencies,
    each after everything it depends on."""
    deps: dict[str, list[str]] = {}
    for line in (kernel.modules / "modules.dep").read_text().splitlines():
        path, _, needs = line.partition(":")
        deps[path] = needs.split()
    by_name = {_module_name(path): path for path in deps}
    builtin = {
        _module_name(path) for path in (kernel.modules / "modules.builtin").read_text().split()
    }

    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps[path]:
            visit(dep)
        order.append(path)

    for name in MODULES:
        if name in builtin:
            continue
        if name not in by_name:
            raise SystemExit(f"{kernel.release}: module {name} is not built in nor in modules.dep")
        visit(by_name[name])
    return [Path(p) for p in order]


def _module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".ko.xz") else data


class Cpio:
    """Writer of the newc format the kernel unpacks (see early_userspace_support)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ino = 0

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self.ino += 1
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        self.parts.append(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self._pad()
        self.parts.append(data)
        self._pad()

    def _pad(self) -> None:
        size = sum(map(len, self.parts))
        self.parts.append(b"\0" * (-size % 4))

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return b"".join(self.parts)


def build(kernel: Kernel) -> Path:
    """Write the kernel's initramfs (only when its bytes changed) and return its path."""
    if not BUSYBOX.is_file():
        raise SystemExit(f"{BUSYBOX} is missing: apt-get install busybox-static")
    cpio = Cpio()
    for directory in ("bin", "dev", "proc", "sys", "modules", "host", "rw", "newroot"):
        cpio.add(directory, 0o040755)
    cpio.add("dev/console", 0o020600, rdev=(5, 1))
    cpio.add("bin/busybox", 0o100755, BUSYBOX.read_bytes())
    cpio.add("bin/sh", 0o120777, b"busybox")
    for script in ("init", "stage2"):
        cpio.add(script, 0o100755, (SCRIPTS / script).read_bytes())
    order = module_load_order(kernel)
    names = [f"{_module_name(str(rel))}.ko" for rel in order]
    for name, rel in zip(names, order, strict=True):
        cpio.add(f"modules/{name}", 0o100644, _module_bytes(kernel.modules / rel))
    cpio.add("modules/order", 0o100644, "".join(f"{n}\n" for n in names).encode())

    image = cpio.finish()
    target = kernel.root / "initramfs.cpio"
    if not target.is_file() or target.read_bytes() != image:
        target.write_bytes(image)
    return target
