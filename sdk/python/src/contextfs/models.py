"""What the server answers, as typed values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class Version:
    """One version of a file or directory (the server's ``VersionInfo``).

    ``status`` says how a write landed: ``clean`` (as sent), ``merged``
    (three-way merged with a concurrent write) or ``lww`` (could not merge:
    the last writer won; the other side is still in the history)."""

    node: int
    version: int
    path: str
    kind: str
    mode: int
    hash: str
    size: int
    op: str
    status: str
    deleted: bool
    parent: Optional[int]
    author: str
    agent_id: Optional[str]
    message: Optional[str]
    created_at: str
    #: The file's own modification time, when the server records one.
    mtime: Optional[str] = None

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Version":
        return cls(
            node=d["node"],
            version=d["version"],
            path=d["path"],
            kind=d["kind"],
            mode=d["mode"],
            hash=d["hash"],
            size=d["size"],
            op=d["op"],
            status=d["status"],
            deleted=d["deleted"],
            parent=d.get("parent"),
            author=d.get("author", ""),
            agent_id=d.get("agent_id"),
            message=d.get("message"),
            created_at=d.get("created_at", ""),
            mtime=d.get("mtime"),
        )


@dataclass(frozen=True)
class Entry:
    """A live node in a listing (the server's ``TreeEntry``)."""

    path: str
    id: int
    kind: str
    mode: int
    size: int
    hash: str
    version: int
    modified_at: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Entry":
        return cls(
            path=d["path"],
            id=d["id"],
            kind=d["kind"],
            mode=d["mode"],
            size=d["size"],
            hash=d["hash"],
            version=d["version"],
            modified_at=d["modified_at"],
        )


@dataclass(frozen=True)
class Change:
    """One event of the change feed: a version written somewhere in the project."""

    seq: int
    node: int
    path: str
    old_path: Optional[str]
    op: str
    version: int
    kind: str
    hash: str
    size: int
    mode: int
    deleted: bool
    agent_id: Optional[str]
    at: str

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Change":
        return cls(
            seq=d["seq"],
            node=d["node"],
            path=d["path"],
            old_path=d.get("old_path"),
            op=d["op"],
            version=d["version"],
            kind=d["kind"],
            hash=d["hash"],
            size=d["size"],
            mode=d["mode"],
            deleted=d["deleted"],
            agent_id=d.get("agent_id"),
            at=d["at"],
        )


@dataclass(frozen=True)
class ReadResult:
    """Content plus the version it is, from one checkout."""

    data: bytes
    node: int
    version: int
    hash: str
    status: str
