"""Atomic outputs: whoever reads a path sees its old content or its new content, never a part of either.

A file is written to ``NAME.tmp`` beside it, flushed to disk, and renamed over ``NAME`` (``os.replace``, atomic
on POSIX within one filesystem). A folder is built as ``NAME.tmp/`` and then swapped with ``NAME/``: on Linux
with ``renameat2(RENAME_EXCHANGE)``, one atomic step even when ``NAME/`` exists; where the kernel or the
filesystem lacks it, ``NAME/`` is first renamed to ``NAME.old/`` — then a process killed between the two renames
leaves ``NAME.old/`` and no ``NAME/`` (never a partial ``NAME/``). A process killed while writing leaves a
stale ``NAME.tmp``, which the next write of the same path removes first.

    atomic_write_text(path, text)       atomic_write_json(path, obj)       atomic_write_bytes(path, data)
    with atomic_file(path) as tmp: df.to_csv(tmp)      # any writer that takes a path (torch.save, to_csv, ...)
    with atomic_dir(dest) as tmp: model.save_pretrained(tmp)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_dir", "atomic_file", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "replace_dir", "tmp_path"]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def tmp_path(path: str | os.PathLike) -> Path:
    """The temporary sibling ``NAME.tmp`` of ``path`` that the functions here write first."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for f in files:
            p = os.path.join(folder, f)
            if os.path.islink(p):
                continue
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(folder))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield ``NAME.tmp`` to write; on success it replaces ``path`` (after an fsync), on error it is removed."""
    path = Path(path)
    tmp = tmp_path(path)
    _remove(tmp)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    if fsync:
        _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    with atomic_file(path, fsync) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8", fsync: bool = True) -> None:
    with atomic_file(path, fsync) as tmp:
        tmp.write_text(text, encoding=encoding)


def atomic_write_json(path: str | os.PathLike, obj, fsync: bool = True, **dumps_kwargs) -> None:
    """``json.dumps(obj, indent=2)`` (or ``dumps_kwargs``) written atomically."""
    atomic_write_text(path, json.dumps(obj, **({"indent": 2} | dumps_kwargs)), fsync=fsync)


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically (Linux ≥ 3.15, glibc ≥ 2.28); False where that is not available."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # kernel or filesystem without RENAME_EXCHANGE
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def replace_dir(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Put the folder ``src`` at ``dest`` (replacing a folder there) as atomically as the platform allows."""
    src, dest = Path(src), Path(dest)
    if not dest.exists() and not dest.is_symlink():
        os.replace(src, dest)  # nothing to replace: one atomic rename
    elif dest.is_dir() and not dest.is_symlink() and _renameat2_exchange(src, dest):
        _remove(src)  # src now holds the old folder
    else:
        old = dest.with_name(dest.name + ".old")
        _remove(old)
        if dest.is_dir() and not dest.is_symlink():
            os.replace(dest, old)
        else:
            dest.unlink()
        os.replace(src, dest)
        _remove(old)
    _fsync_dir(dest.parent)


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield an empty ``NAME.tmp/`` to fill; on success it takes the place of ``dest`` (its files flushed to
    disk first), on error it is removed and ``dest`` is left as it was."""
    dest = Path(dest)
    tmp = tmp_path(dest)
    _remove(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if fsync:
            _fsync_tree(tmp)
        replace_dir(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise
