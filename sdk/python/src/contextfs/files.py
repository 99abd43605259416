"""File objects of ``ContextFS.open``: the content lives in memory; a
writable file commits once, on ``close()``, on top of the version it was
opened at, so two writers merge like two mounts do."""

from __future__ import annotations

import io
from typing import Callable, Optional

from .models import Version

Commit = Callable[[bytes], Version]


class WorkspaceFile(io.BytesIO):
    """A binary file object. ``base_version`` is the version it was opened at
    (``None`` for a new file); after ``close()``, ``version`` is what the
    commit produced (``None`` for a read-only file or when nothing was
    written in append mode)."""

    def __init__(
        self,
        path: str,
        initial: bytes,
        base_version: Optional[int],
        commit: Optional[Commit],
        *,
        append: bool = False,
        must_commit: bool = False,
    ) -> None:
        super().__init__(initial)
        self.path = path
        self.base_version = base_version
        self.version: Optional[Version] = None
        self._commit = commit
        # Truncating opens ("w") commit even when nothing was written: the
        # file is then empty, as with open(..., "w") on a disk.
        self._dirty = must_commit
        if append:
            self.seek(0, io.SEEK_END)

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return self._commit is not None

    def write(self, b) -> int:  # type: ignore[override]
        if self._commit is None:
            raise io.UnsupportedOperation(f"{self.path} was opened for reading")
        self._dirty = True
        return super().write(b)

    def truncate(self, size: Optional[int] = None) -> int:
        if self._commit is None:
            raise io.UnsupportedOperation(f"{self.path} was opened for reading")
        self._dirty = True
        return super().truncate(size)

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._commit is not None and self._dirty:
                self.version = self._commit(self.getvalue())
                self._dirty = False
        finally:
            super().close()


def text_mode(raw: WorkspaceFile, encoding: str, newline: Optional[str]) -> io.TextIOWrapper:
    wrapper = io.TextIOWrapper(raw, encoding=encoding, newline=newline, write_through=True)
    if raw.tell():
        # Append mode: the text layer starts where the bytes end.
        wrapper.seek(0, io.SEEK_END)
    return wrapper


def parse_mode(mode: str):
    """(kind, binary) where kind is r, w or a."""
    allowed = {"r", "rb", "rt", "w", "wb", "wt", "a", "ab", "at"}
    if mode not in allowed:
        raise ValueError(f"mode {mode!r} is not one of r, rb, w, wb, a, ab")
    return mode[0], "b" in mode
