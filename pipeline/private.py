"""Folders and files that hold replies or run details, readable by their owner only.

The state folder and its journal, the response cache, and the local model's model and log folders
hold replies (or the prompts that produced them): they are created ``0700`` (folders) and ``0600``
(files) whatever the umask — a cron job under ``umask 000`` shares none of them. A folder chatbatch
did not create (``--state-dir /some/existing/folder``) is left as it is; files chatbatch owns are
tightened to ``0600`` when opened. The output and its summary are ordinary files and follow the
umask (see :mod:`pipeline.sinks`).

    >>> private_dir(Path("out/job.parquet.state"))   # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents, which follow the umask) as an owner-only folder."""
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            return path  # made by someone else meanwhile: theirs, left as it is
        os.chmod(path, DIR_MODE)  # exactly 0700, whatever the umask took away
    return path


def private_file(path: Path) -> Path:
    """Make sure ``path`` exists and is owner-only (create it empty, or tighten its mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path
