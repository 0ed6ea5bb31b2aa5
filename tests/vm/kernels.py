"""Where the test kernels live, shared by fetch_kernels.py, run.py and matrix.py.

``tests/vm/cache/kernels.json`` maps a series name ("6.1") to the Debian
package that was extracted for it; ``tests/vm/cache/<release>/`` holds that
package unpacked (``boot/vmlinuz-<release>``, ``lib/modules/<release>/``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

VM_DIR = Path(__file__).resolve().parent
REPO = VM_DIR.parent.parent
CACHE = VM_DIR / "cache"
INDEX = CACHE / "kernels.json"


@dataclass(frozen=True)
class Kernel:
    series: str  # "6.1"
    package: str  # linux-image-6.1.0-56-amd64-unsigned
    version: str  # Debian package version, 6.1.192-2
    release: str  # uname -r inside the guest, 6.1.0-56-amd64

    @property
    def root(self) -> Path:
        return CACHE / self.release

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release

    def complete(self) -> bool:
        return self.vmlinuz.is_file() and (self.modules / "modules.dep").is_file()


def load_index() -> dict[str, Kernel]:
    if not INDEX.is_file():
        return {}
    raw: dict[str, dict[str, str]] = json.loads(INDEX.read_text())
    return {series: Kernel(**fields) for series, fields in raw.items()}


def save_index(kernels: dict[str, Kernel]) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    data = {series: asdict(k) for series, k in sorted(kernels.items())}
    INDEX.write_text(json.dumps(data, indent=2) + "\n")


def find_kernel(series: str) -> Kernel:
    """The cached kernel for ``series``, or SystemExit telling how to get it."""
    kernel = load_index().get(series)
    if kernel is None or not kernel.complete():
        raise SystemExit(
            f"kernel {series} is not in {CACHE}: run `python tests/vm/fetch_kernels.py {series}`"
        )
    return kernel
