"""benchmarks/gpu_wheels.py and how benchmarks/gpu_bench.sh uses it: a carried wheel is slimmed to what
seqtune loads and still installs; the carried pyarrow is installed only when the image's own does not
satisfy the carried wheels. Wheels here are built by hand (no network)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile

import pyarrow
import pytest
from conftest import REPO

pytestmark = pytest.mark.timeout(300)


def load_gpu_wheels():
    spec = importlib.util.spec_from_file_location("gpu_wheels", f"{REPO}/benchmarks/gpu_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_wheel(folder, name: str, version: str, files: dict[str, str], requires: tuple[str, ...] = ()) -> str:
    """A minimal valid wheel of the package `name` holding `files` (path: text) and a RECORD listing them."""
    dist_info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {requirement}\n" for requirement in requires
    )
    members = dict(
        files,
        **{
            f"{dist_info}/METADATA": metadata,
            f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        },
    )
    members[f"{dist_info}/RECORD"] = "".join(f"{path},,\n" for path in [*members, f"{dist_info}/RECORD"])
    path = os.path.join(folder, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in members.items():
            archive.writestr(member, text)
    return path


def test_slim_wheel_drops_members_and_their_record_lines_and_still_installs(tmp_path):
    gpu_wheels = load_gpu_wheels()
    wheel = build_wheel(
        tmp_path,
        "arrowish",
        "1.0",
        {
            "arrowish/__init__.py": "from arrowish.core import VALUE\n",
            "arrowish/core.py": "VALUE = 42\n",
            "arrowish/libarrowish_flight.so": "x" * 50_000,
            "arrowish/flight.py": "import arrowish._flight\n",
            "arrowish/tests/test_core.py": "def test(): pass\n",
        },
    )
    os.chmod(wheel, 0o644)
    saved = gpu_wheels.slim_wheel(wheel, ["arrowish/*flight*", "arrowish/tests/*"])

    assert saved > 0 and oct(os.stat(wheel).st_mode & 0o777) == "0o644"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        record = archive.read("arrowish-1.0.dist-info/RECORD").decode()
    assert names == {
        "arrowish/__init__.py",
        "arrowish/core.py",
        "arrowish-1.0.dist-info/METADATA",
        "arrowish-1.0.dist-info/WHEEL",
        "arrowish-1.0.dist-info/RECORD",
    }
    assert "flight" not in record and "tests/" not in record and "arrowish/core.py,," in record

    site = tmp_path / "site-packages"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site), wheel],
        check=True,
        timeout=120,
    )
    imported = subprocess.run(
        [sys.executable, "-c", "import arrowish; print(arrowish.VALUE)"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(site)),
        timeout=60,
    )
    assert imported.stdout.strip() == "42", imported.stderr
    assert not (site / "arrowish" / "flight.py").exists() and not (site / "arrowish" / "tests").exists()


def test_unmet_compares_this_pythons_package_with_what_the_wheels_require(tmp_path):
    gpu_wheels = load_gpu_wheels()
    installed = pyarrow.__version__
    met, unmet_dir = tmp_path / "met", tmp_path / "unmet"
    met.mkdir(), unmet_dir.mkdir()
    build_wheel(
        met,
        "needs_arrow",
        "1.0",
        {"needs_arrow/__init__.py": ""},
        requires=("pyarrow>=1.0", 'pyarrow>=999; extra == "never"', "numpy"),
    )
    build_wheel(unmet_dir, "needs_new_arrow", "1.0", {"needs_new_arrow/__init__.py": ""}, requires=("pyarrow>=999",))

    assert gpu_wheels.unmet(str(met), "pyarrow") is None  # a conditional requirement (extra) does not count
    assert gpu_wheels.unmet(str(unmet_dir), "pyarrow") == f"pyarrow {installed} is installed; pyarrow>=999 is required"
    assert gpu_wheels.unmet(str(met), "no-such-package-here") == "no-such-package-here is not installed"
    result = subprocess.run(
        [sys.executable, f"{REPO}/benchmarks/gpu_wheels.py", "unmet", str(unmet_dir), "pyarrow"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout.strip()) == (
        3,
        f"pyarrow {installed} is installed; pyarrow>=999 is required",
    )
    assert (
        subprocess.run(
            [sys.executable, f"{REPO}/benchmarks/gpu_wheels.py", "unmet", str(met), "pyarrow"], timeout=60
        ).returncode
        == 0
    )


def run_gpu_bench_with_wheels(tmp_path, wheels) -> subprocess.CompletedProcess:
    # The time limits stop both parts at once: what is checked here happens before them.
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        OUT=str(tmp_path / "out"),
        WHEELS=str(wheels),
        SITE=str(tmp_path / "carried" / "site-packages"),
        SPEED_LIMIT="1",
        QUALITY_LIMIT="1",
    )
    return subprocess.run(
        ["bash", f"{REPO}/benchmarks/gpu_bench.sh", "run"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env=env,
    )


@pytest.mark.parametrize("required", ["pyarrow>=999", "pyarrow>=1.0"])
def test_gpu_bench_installs_the_carried_pyarrow_only_when_the_images_is_too_old(tmp_path, required):
    """The carried pyarrow here is a stand-in that cannot be imported: when it is installed, the run's
    import check says so and stops; when the image's pyarrow satisfies the carried wheels it is left out."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    build_wheel(wheels, "needs_arrow", "1.0", {"needs_arrow/__init__.py": ""}, requires=(required,))
    build_wheel(wheels, "pyarrow", "999.0", {"pyarrow/__init__.py": "raise ImportError('the carried stand-in')\n"})
    result = run_gpu_bench_with_wheels(tmp_path, wheels)
    site = tmp_path / "carried" / "site-packages"
    if required == "pyarrow>=999":
        assert (
            f"gpu_bench: pyarrow {pyarrow.__version__} is installed; "
            "pyarrow>=999 is required; installing the carried one" in result.stdout
        ), result.stdout + result.stderr
        assert (site / "pyarrow" / "__init__.py").exists()
        assert result.returncode == 1 and "the carried stand-in" in result.stderr, result.stderr
        assert "cannot import a requirement" in result.stderr
    else:
        assert "installing the carried one" not in result.stdout
        assert (site / "needs_arrow").exists() and not (site / "pyarrow").exists()
        assert f"| pyarrow {pyarrow.__version__} from {os.path.dirname(pyarrow.__file__)} |" in result.stdout, (
            result.stdout + result.stderr
        )
