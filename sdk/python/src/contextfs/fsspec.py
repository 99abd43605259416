"""An fsspec filesystem: ``contextfs://PROJECT/path/in/project``.

Registered through the ``fsspec.specs`` entry point, so pandas, DuckDB,
Dask or Hugging Face datasets open workspace files directly::

    import pandas as pd
    df = pd.read_csv("contextfs://notes/data/table.csv")

The server and token come from ``storage_options`` (``server=``, ``token=``)
or the same environment variables and login file as ``ContextFS``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple

from fsspec.spec import AbstractFileSystem

from .client import ContextFS
from .errors import NotFound


class ContextFSFileSystem(AbstractFileSystem):
    protocol = "contextfs"
    root_marker = ""

    def __init__(self, server: Optional[str] = None, token: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._server = server
        self._token = token
        self._clients: Dict[str, ContextFS] = {}

    @classmethod
    def _strip_protocol(cls, path):  # type: ignore[override]
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("contextfs://"):
            path = path[len("contextfs://") :]
        return path.strip("/")

    def _client(self, project: str) -> ContextFS:
        if project not in self._clients:
            self._clients[project] = ContextFS(self._server, self._token, project)
        return self._clients[project]

    def _split(self, path: str) -> Tuple[ContextFS, str, str]:
        path = self._strip_protocol(path)
        project, _, rest = path.partition("/")
        if not project:
            raise ValueError("a contextfs URL names the project first: contextfs://PROJECT/path")
        return self._client(project), project, rest

    @staticmethod
    def _entry(project: str, path: str, kind: str, size: int, **extra: Any) -> Dict[str, Any]:
        return {
            "name": f"{project}/{path}" if path else project,
            "size": size,
            "type": "directory" if kind == "dir" else "file",
            **extra,
        }

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> List[Any]:  # type: ignore[override]
        client, project, rest = self._split(path)
        try:
            entries = client.list(rest)
        except NotFound as e:
            raise FileNotFoundError(path) from e
        out = [
            self._entry(project, e.path, e.kind, e.size, hash=e.hash, version=e.version, modified_at=e.modified_at)
            for e in entries
        ]
        return out if detail else [o["name"] for o in out]

    def info(self, path: str, **kwargs: Any) -> Dict[str, Any]:
        client, project, rest = self._split(path)
        if not rest:
            return self._entry(project, "", "dir", 0)
        try:
            v = client.stat(rest)
        except NotFound as e:
            raise FileNotFoundError(path) from e
        return self._entry(project, rest, v.kind, v.size, hash=v.hash, version=v.version, modified_at=v.created_at)

    def modified(self, path: str) -> datetime:
        stamp = self.info(path).get("modified_at") or "1970-01-01T00:00:00Z"
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))

    def cat_file(self, path: str, start: Optional[int] = None, end: Optional[int] = None, **kwargs: Any) -> bytes:
        client, _, rest = self._split(path)
        try:
            data = client.read(rest)
        except NotFound as e:
            raise FileNotFoundError(path) from e
        return data[start:end]

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        client, _, rest = self._split(path)
        client.write(rest, value)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any):  # type: ignore[override]
        client, _, rest = self._split(path)
        try:
            return client.open(rest, mode if "b" in mode else mode + "b")
        except NotFound as e:
            raise FileNotFoundError(path) from e

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        client, _, rest = self._split(path)
        if rest:
            client.mkdir(rest)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        client, _, rest = self._split(path)
        if not exist_ok and rest and client.exists(rest):
            raise FileExistsError(path)
        if rest:
            client.mkdir(rest)

    def rm_file(self, path: str) -> None:
        client, _, rest = self._split(path)
        try:
            client.delete(rest)
        except NotFound as e:
            raise FileNotFoundError(path) from e

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def rm(self, path, recursive: bool = False, maxdepth: Optional[int] = None) -> None:  # type: ignore[override]
        for one in path if isinstance(path, list) else [path]:
            client, _, rest = self._split(one)
            try:
                client.delete(rest, recursive=recursive)
            except NotFound as e:
                raise FileNotFoundError(one) from e

    def rmdir(self, path: str) -> None:
        self.rm(path)

    def mv(self, path1, path2, recursive: bool = False, maxdepth: Optional[int] = None, **kwargs: Any) -> None:  # type: ignore[override]
        client, project, src = self._split(path1)
        _, project2, dst = self._split(path2)
        if project != project2:
            raise ValueError("moving between projects is a copy and a delete; do those explicitly")
        client.move(src, dst)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        self.pipe_file(path2, self.cat_file(path1))
