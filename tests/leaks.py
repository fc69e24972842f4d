"""Look for a secret where a dbt run could leave it: files on disk, other processes' environ and argv."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path


def scan_files(roots: Iterable[Path], needle: str) -> tuple[list[Path], list[Path]]:
    """(files holding ``needle``, every file read): all regular files below ``roots``, hidden ones too.

    Symlinks are not followed: a run's shadow project links to the user's project, which is not ours.
    Files may vanish while dbt runs; those are skipped.
    """
    hits: list[Path] = []
    read: list[Path] = []
    for root in roots:
        for folder, _dirs, files in os.walk(root, followlinks=False):
            for name in files:
                path = Path(folder) / name
                try:
                    if not stat.S_ISREG(path.lstat().st_mode):
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                read.append(path)
                if needle.encode() in data:
                    hits.append(path)
    return hits, read


def processes_holding(needle: str, part: str) -> set[int]:
    """Live processes whose ``/proc/PID/<part>`` (``environ`` or ``cmdline``) contains ``needle``."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                data = Path(f"/proc/{entry}/{part}").read_bytes()
            except OSError:
                continue
            if needle.encode() in data:
                found.add(int(entry))
    return found
