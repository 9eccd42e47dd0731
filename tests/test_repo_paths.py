"""The repository names no absolute path of the machine it was written on: every tracked file
(code, docs, Makefile, benchmarks) works from any checkout, on any machine."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folders that only exist on one machine (a build box's work area, root's or a user's home, a temp
# folder), built from parts so that this file does not name them itself.
MACHINE_DIRS = ("wo" + "rk", "ro" + "ot", "ho" + "me", "tm" + "p", "Us" + "ers")
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:" + "|".join(MACHINE_DIRS) + r")/")


def tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in listed.decode("utf-8", "surrogateescape").split("\0") if name]


def test_no_tracked_file_names_an_absolute_path_of_the_machine() -> None:
    """No tracked file holds a path under /work, /root, /home, /tmp or /Users, nor this checkout's
    own absolute path: each such line is listed."""
    found = []
    here = str(ROOT)
    for path in tracked_files():
        if path.is_symlink() or not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        for number, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line) or here in line:
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "absolute paths of a machine:\n" + "\n".join(found)
