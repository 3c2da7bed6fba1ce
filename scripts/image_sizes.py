"""Estimate the two images' sizes from the packages they install (no container engine needed).

    python -P scripts/image_sizes.py --venv PATH           # installed size of a venv's packages
    python -P scripts/image_sizes.py --lock requirements/worker.txt --pypi
                                                            # download size of a lock's Linux wheels

An image is its base (python:3.11-slim, about 125 MB uncompressed) plus its site-packages. The
operator's packages are measured from a venv installed from requirements/operator.txt (the test in
tests/test_lock.py builds one); the worker's CUDA wheels cannot be installed here (gigabytes), so
their compressed download sizes are summed from PyPI's JSON API for CPython 3.11 on manylinux x86_64:
a lower bound on the installed size (wheels are zip files; CUDA libraries compress little).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

MB = 1e6
# What pip on CPython 3.11, glibc 2.36 (Debian bookworm, the base image), x86_64 accepts, best first.
_PLATFORMS = [f"manylinux_2_{m}_x86_64" for m in range(36, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]  # fmt: skip
TAGS = [*cpython_tags((3, 11), platforms=_PLATFORMS), *compatible_tags((3, 11), "cp311", _PLATFORMS)]
LINUX_311 = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
             "python_version": "3.11", "python_full_version": "3.11.13", "implementation_name": "cpython"}  # fmt: skip


def venv_sizes(venv: Path) -> dict[str, int]:
    """{top-level folder of site-packages: bytes}."""
    (site,) = (venv / "lib").glob("python3*/site-packages")
    out: dict[str, int] = {}
    for path in site.rglob("*"):
        if path.is_file() and not path.is_symlink():
            top = path.relative_to(site).parts[0]
            out[top] = out.get(top, 0) + path.stat().st_size
    return out


def lock_pins(lock: Path) -> list[tuple[str, str]]:
    pins = []
    for line in lock.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(LINUX_311):
                pins.append((req.name, next(iter(req.specifier)).version))
    return pins


def wheel_size(name: str, version: str) -> int | None:
    """Size of the best-matching wheel, from PyPI's simple index in its JSON form (PEP 691, sizes per PEP 700)."""
    req = urllib.request.Request(f"https://pypi.org/simple/{name}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    best = None
    for f in files:
        if not f["filename"].endswith(".whl"):
            continue
        try:
            _, wheel_version, _, tags = parse_wheel_filename(f["filename"])
        except InvalidWheelFilename:  # ancient uploads with non-standard names
            continue
        if str(wheel_version) != version:
            continue
        ranks = [TAGS.index(t) for t in tags if t in TAGS]
        if ranks and (best is None or min(ranks) < best[0]):
            best = (min(ranks), f["size"])
    return None if best is None else best[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", type=Path)
    ap.add_argument("--lock", type=Path)
    ap.add_argument("--pypi", action="store_true", help="sum the lock's wheel sizes from PyPI")
    args = ap.parse_args()
    if args.venv:
        sizes = venv_sizes(args.venv)
        for top, size in sorted(sizes.items(), key=lambda kv: -kv[1])[:15]:
            print(f"{size / MB:10.1f} MB  {top}")
        print(f"{sum(sizes.values()) / MB:10.1f} MB  site-packages of {args.venv}")
    if args.lock and args.pypi:
        total, missing = 0, []
        rows = []
        for name, version in lock_pins(args.lock):
            size = wheel_size(name, version)
            if size is None:
                missing.append(f"{name}=={version}")
                continue
            rows.append((size, f"{name}=={version}"))
            total += size
        for size, pin in sorted(rows, reverse=True)[:15]:
            print(f"{size / MB:10.1f} MB  {pin}")
        print(f"{total / MB:10.1f} MB  wheels of {args.lock} (Linux x86_64, CPython 3.11)")
        if missing:
            print("no wheel found (sdist only):", ", ".join(missing), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
