"""Wheel helpers for benchmarks/gpu_bench.sh: what a GPU image lacks is carried as wheels, and a device
call carries at most 64 MiB, so a large wheel is slimmed to what seqtune imports.

    python benchmarks/gpu_wheels.py slim WHEEL GLOB...   # drop the members matching any GLOB, in place
    python benchmarks/gpu_wheels.py unmet WHEEL_DIR NAME # exit 3 and say why if this Python's NAME does
                                                         # not satisfy what the wheels in WHEEL_DIR require,
                                                         # exit 0 if it does
"""

import fnmatch
import glob
import os
import shutil
import sys
import tempfile
import zipfile
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

UNMET = 3  # the exit status of `unmet` when the requirement is not met (1 and 2 are Python's own failures)


def slim_wheel(path: str, patterns: list[str]) -> int:
    """Rewrite the wheel at `path` without the members matching any of `patterns` (fnmatch globs on the
    member's name), and without their lines in RECORD, so pip installs it as a consistent package.
    Returns the compressed bytes saved."""

    def dropped(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)

    before = os.path.getsize(path)
    handle, scratch = tempfile.mkstemp(suffix=".whl", dir=os.path.dirname(os.path.abspath(path)))
    os.close(handle)
    try:
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(scratch, "w", zipfile.ZIP_DEFLATED) as target:
            for member in source.infolist():
                if dropped(member.filename):
                    continue
                data = source.read(member)
                if member.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(line for line in lines if not dropped(line.split(",", 1)[0])).encode()
                target.writestr(member, data, compress_type=zipfile.ZIP_DEFLATED)
        shutil.copymode(path, scratch)
        os.replace(scratch, path)  # the wheel is whole or unchanged, never half written
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    return before - os.path.getsize(path)


def requirements_on(wheel_dir: str, name: str) -> list[Requirement]:
    """What the wheels in `wheel_dir` require of the package `name` (their unconditional requirements)."""
    wanted = canonicalize_name(name)
    found = []
    for wheel in sorted(glob.glob(os.path.join(wheel_dir, "*.whl"))):
        with zipfile.ZipFile(wheel) as archive:
            metadata_files = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            text = archive.read(metadata_files[0]).decode() if metadata_files else ""
        for line in text.splitlines():
            if line.startswith("Requires-Dist:"):
                requirement = Requirement(line.split(":", 1)[1].strip())
                if canonicalize_name(requirement.name) == wanted and requirement.marker is None:
                    found.append(requirement)
    return found


def unmet(wheel_dir: str, name: str) -> str | None:
    """Why this Python's `name` does not satisfy the wheels in `wheel_dir`, or None when it does."""
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        return f"{name} is not installed"
    for requirement in requirements_on(wheel_dir, name):
        if not requirement.specifier.contains(installed, prereleases=True):
            return f"{name} {installed} is installed; {requirement} is required"
    return None


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "slim":
        saved = slim_wheel(argv[1], argv[2:])
        print(
            f"{os.path.basename(argv[1])}: {saved / 1e6:.1f} MB dropped, {os.path.getsize(argv[1]) / 1e6:.1f} MB left"
        )
        return 0
    if len(argv) == 3 and argv[0] == "unmet":
        reason = unmet(argv[1], argv[2])
        if reason:
            print(reason)
            return UNMET
        return 0
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
