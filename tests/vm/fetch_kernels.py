#!/usr/bin/env python3
"""Download stock Debian kernels for the VM tests and unpack them into tests/vm/cache.

    python tests/vm/fetch_kernels.py            # every series below
    python tests/vm/fetch_kernels.py 6.1 6.12   # some of them
    python tests/vm/fetch_kernels.py --refresh  # look for newer builds

The newest build of each series is picked from the Debian archive at fetch time and
recorded in tests/vm/cache/kernels.json.  A series already unpacked is not looked up
again unless --refresh is given, so repeated runs cost nothing and keep testing the
same kernel.

apt runs with its own state under tests/vm/cache/apt (own sources list, own package
lists), so neither the host's apt configuration nor its sources are touched; the host's
Debian mirror is reused.  Debian 11 (bullseye) is needed for 5.10 only.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kernels import CACHE, Kernel, load_index, save_index

APT = CACHE / "apt"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


@dataclass(frozen=True)
class Series:
    suite: str  # Debian release whose archive carries the kernel
    package: re.Pattern[str]  # group 1 is the build number that orders the candidates


SERIES: dict[str, Series] = {
    "5.10": Series("bullseye", re.compile(r"linux-image-5\.10\.0-(\d+)-amd64-unsigned")),
    "6.1": Series("bookworm", re.compile(r"linux-image-6\.1\.0-(\d+)-amd64-unsigned")),
    "6.12": Series("bookworm", re.compile(r"linux-image-6\.12\.(\d+)\+deb12-amd64-unsigned")),
}


def host_mirrors() -> tuple[str, str]:
    """The (debian, debian-security) archive URLs the host's apt already uses."""
    main = security = ""
    sources = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for source in sources:
        if not source.is_file() or source.suffix not in (".list", ".sources", ""):
            continue
        for url in re.findall(r"https?://\S+", source.read_text(errors="replace")):
            if url.endswith("/debian-security"):
                security = url
            elif url.endswith("/debian"):
                main = url
    if not main:
        raise SystemExit("no Debian archive (an URL ending in /debian) in /etc/apt/sources*")
    return main, security or main.removesuffix("/debian") + "/debian-security"


def apt_dir(arch: str) -> Path:
    return APT if arch == "amd64" else CACHE / f"apt-{arch}"


def apt_options(arch: str = "amd64") -> list[str]:
    """apt-get's options for this cache's own state, package lists of ``arch`` only."""
    apt = apt_dir(arch)
    return [
        f"-oDir::State={apt / 'state'}",
        f"-oDir::Cache={apt / 'cache'}",
        f"-oDir::Etc::SourceList={apt / 'sources.list'}",
        "-oDir::Etc::SourceParts=/dev/null",
        "-oAcquire::Languages=none",
        f"-oAPT::Architectures={arch}",
        "-oAPT::Sandbox::User=root",
        "-oDebug::NoLocking=1",
    ]


def apt_update(suites: set[str], arch: str = "amd64") -> None:
    apt = apt_dir(arch)
    main, security = host_mirrors()
    lines = []
    for suite in sorted(suites):
        lines.append(f"deb [signed-by={KEYRING}] {main} {suite} main")
        lines.append(f"deb [signed-by={KEYRING}] {security} {suite}-security main")
    for sub in ("state/lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text("\n".join(lines) + "\n")
    print(f"apt-get update ({', '.join(sorted(suites))}, {arch}) from {main}", flush=True)
    subprocess.run(["apt-get", *apt_options(arch), "-qq", "update"], check=True)


def newest_package(series: str, arch: str = "amd64") -> str:
    """The newest unsigned kernel image package of ``series`` built for ``arch``."""
    spec = SERIES[series]
    pattern = re.compile(spec.package.pattern.replace("amd64", arch))
    out = subprocess.run(
        ["apt-cache", *apt_options(arch), "search", "--names-only", f"^linux-image-{series}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    builds = {}
    for line in out.splitlines():
        name = line.split(" ", 1)[0]
        match = pattern.fullmatch(name)
        if match:
            builds[int(match.group(1))] = name
    if not builds:
        raise SystemExit(f"no package matching {pattern.pattern} in Debian {spec.suite}")
    return builds[max(builds)]


def download(series: str, package: str) -> Kernel:
    release = package.removeprefix("linux-image-").removesuffix("-unsigned")
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    subprocess.run(["apt-get", *apt_options(), "-qq", "download", package], cwd=debs, check=True)
    (deb,) = debs.glob(f"{package}_*.deb")
    version = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Version"], check=True, capture_output=True, text=True
    ).stdout.strip()
    size_mb = deb.stat().st_size / 1e6
    kernel = Kernel(series=series, package=package, version=version, release=release)
    staging = CACHE / f"{release}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(staging)], check=True)
    shutil.rmtree(staging / "usr", ignore_errors=True)  # docs only
    # modules.dep is made by the package's postinst, which dpkg-deb does not run
    subprocess.run(["busybox", "depmod", "-b", str(staging), release], check=True)
    shutil.rmtree(kernel.root, ignore_errors=True)
    staging.rename(kernel.root)
    deb.unlink()
    if not kernel.complete():
        raise SystemExit(f"{package}: no {kernel.vmlinuz} or modules.dep after extraction")
    took = time.monotonic() - started
    print(f"{series}: downloaded {package} {version} ({size_mb:.0f} MB, {took:.0f} s)")
    return kernel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("series", nargs="*", help=f"any of {', '.join(SERIES)} (default: all)")
    parser.add_argument("--refresh", action="store_true", help="look for newer builds")
    args = parser.parse_args()
    wanted: list[str] = args.series or list(SERIES)
    unknown = set(wanted) - set(SERIES)
    if unknown:
        parser.error(f"unknown series {', '.join(sorted(unknown))}; known: {', '.join(SERIES)}")

    index = load_index()
    todo = [s for s in wanted if args.refresh or s not in index or not index[s].complete()]
    if todo:
        apt_update({SERIES[s].suite for s in todo})
    for series in todo:
        package = newest_package(series)
        cached = index.get(series)
        if cached and cached.package == package and cached.complete():
            continue
        if cached:
            shutil.rmtree(cached.root, ignore_errors=True)
        index[series] = download(series, package)
        save_index(index)
    for series in wanted:
        k = index[series]
        print(f"{series:>5}  {k.release:<24} {k.package} {k.version}  {k.vmlinuz}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
