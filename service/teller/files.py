"""Teller's own files are private: directories 0700, files 0600.

The data directory holds the SQLite database (sealed keys, the audit chain)
and, in dev mode, the KEK and the operator token in plain text: nobody but
the user running Teller may read them. Modes are only ever tightened, on
what this user owns; a wider mode found on an existing file is logged.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)
DIR_MODE = 0o700
FILE_MODE = 0o600


def _tighten(path: Path, mode: int) -> None:
    st = path.stat()
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & ~mode == 0:
        return
    log.warning("%s was readable by others (mode %o): tightening to %o", path, stat.S_IMODE(st.st_mode), mode)
    os.chmod(path, stat.S_IMODE(st.st_mode) & mode)


def private_dir(path: Path) -> Path:
    """``path`` exists as a directory only its owner can enter."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """``path`` exists (empty if new) and only its owner can read or write it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    os.close(fd)
    _tighten(path, FILE_MODE)
    return path


__all__ = ["DIR_MODE", "FILE_MODE", "private_dir", "private_file"]
