"""Writing the instructor's files (exports, the class report, feedback) without surprises.

Every file is written whole or not at all (a temporary file in the same folder, then a rename),
never through a symbolic link (the file's own name or its folder), and never over a file that is
there already unless the caller says ``overwrite`` (the CLI's ``--overwrite``). A student's name
becomes a file name only through :func:`safe_name`.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

from reclor_lab.errors import ReclorLabError


class OutputError(ReclorLabError, ValueError):
    """A file that is not written: it exists, or it or its folder is a symbolic link."""


def safe_name(name: str) -> str:
    """A file name from a student's name: letters, digits, ``.``, ``-``, ``_``; never hidden or empty.

    >>> safe_name("ana/../x y")
    'ana_.._x_y'
    """
    cleaned = re.sub(r"[^\w.-]+", "_", name).lstrip(".")
    return cleaned or "student"


def check_free(path: Path, overwrite: bool) -> None:
    """Raise :class:`OutputError` when ``path`` could not be written: it is a symbolic link (or its
    folder is), or it exists and ``overwrite`` is false."""
    path = Path(path)
    if path.parent.is_symlink():
        raise OutputError(f"{path.parent} is a symbolic link; nothing is written through one (choose a real folder)")
    if path.is_symlink():
        raise OutputError(f"{path} is a symbolic link; nothing is written through one (remove it or choose another)")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; choose another name or pass --overwrite")
    if path.exists() and not path.is_file():
        raise OutputError(f"{path} exists and is not a file")


def write_file(path: str | Path, data: str | bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created). Refuses (one
    :class:`OutputError`) a symbolic link at ``path`` or as its folder, and an existing file
    unless ``overwrite``. The temporary file is created with ``O_EXCL | O_NOFOLLOW`` inside the
    folder opened without following links, and renamed over the name itself (a rename replaces
    a directory entry; it never writes into what a link points to)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_free(path, overwrite)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        tmp = f".{path.name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            try:  # the name again, as the folder holds it now: a link that appeared since is refused
                st = os.stat(path.name, dir_fd=folder, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode) or not overwrite:
                    raise OutputError(f"{path} appeared while it was written; not replaced")
            except FileNotFoundError:
                pass
            os.replace(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=folder)
            except FileNotFoundError:
                pass
            raise
    finally:
        os.close(folder)
    return path
