"""Packaging, as a user meets it: the built wheel works away from the source tree, and an editable
install is visible to mypy. Offline: fresh venvs borrow this venv's dependencies via a .pth line."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--disable-pip-version-check", "--no-input", "-q"]


def env_without_the_checkout() -> dict[str, str]:
    """The environment, minus anything that would point Python or the corpus at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STATEMACHINE_AGENT_CORPUS")}
    env["PIP_NO_WARN_SCRIPT_LOCATION"] = "1"
    return env


def fresh_venv(where: Path) -> Path:
    """A new venv (no pip) whose site-packages adds this venv's as a plain path: the dependencies
    resolve offline, while the package itself must come from what we install into it."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "_dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return python


def pip_into(python: Path, *args: str) -> None:
    """Run this venv's pip against another interpreter (pip --python), offline."""
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *QUIET, *args,
                           "--no-deps", "--no-index"], capture_output=True, text=True,
                          env=env_without_the_checkout(), check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built offline with this venv's setuptools."""
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", *QUIET, "--no-deps", "--no-index",
                           "--no-build-isolation", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    [built] = out.glob("statemachine_agent-*.whl")
    return built


def test_installed_wheel_runs_the_readme_example_from_anywhere(wheel: Path, tmp_path: Path) -> None:
    """After installing the wheel (no source tree around), the README's CLI line answers from the
    corpus shipped in the package and ends in `done`."""
    python = fresh_venv(tmp_path / "venv")
    pip_into(python, "install", str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import statemachine_agent.examples.research as r; "
                            "print(r.__file__); print(r.CORPUS)"], cwd=elsewhere, capture_output=True,
                           text=True, env=env_without_the_checkout(), check=True).stdout.split()
    assert all(p.startswith(str(tmp_path / "venv")) for p in where), where  # not the checkout
    assert not Path(where[1]).is_symlink()  # real Markdown files in the wheel
    done = subprocess.run(
        [str(python.parent / "statemachine-agent"), "run", "statemachine_agent.examples.research:workflow",
         "--input", '{"question": "How does the checker bound loops?"}'],
        cwd=elsewhere, capture_output=True, text=True, env=env_without_the_checkout(), check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "terminal: done (success)" in done.stdout
    assert "bound" in done.stdout


def test_wheel_metadata_uses_an_spdx_license(wheel: Path) -> None:
    """The wheel declares License-Expression: MIT and carries the LICENSE file (PEP 639)."""
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert any(n.endswith("examples/corpus/checks.md") for n in names)


def test_editable_install_is_visible_to_mypy(tmp_path: Path) -> None:
    """`pip install -e` of the flat layout gives a path .pth, so mypy --strict in another project
    reads the package's types: a deliberate type error is reported, the import is resolved."""
    python = fresh_venv(tmp_path / "venv")
    pip_into(python, "install", "--no-build-isolation", "-e", str(ROOT))
    project = tmp_path / "project"
    project.mkdir()
    (project / "user.py").write_text(
        "from statemachine_agent import Context, Workflow\n"
        "from statemachine_agent.tools import Retry\n\n\n"
        "class C(Context):\n    n: int = 0\n\n\n"
        "wf: Workflow[C] = Workflow('user', C)\n"
        "backoff: int = Retry(attempts=2).backoff  # a float: mypy must say so\n",
        encoding="utf-8",
    )
    done = subprocess.run([str(python), "-m", "mypy", "--strict", "--no-incremental", "user.py"],
                          cwd=project, capture_output=True, text=True, env=env_without_the_checkout(),
                          check=False)
    out = done.stdout + done.stderr
    assert 'user.py:10: error: Incompatible types in assignment (expression has type "float", variable ' \
           'has type "int")' in out, out
    assert "missing library stubs or py.typed marker" not in out
    assert "Cannot find implementation" not in out
    assert out.count("error:") == 1, out
