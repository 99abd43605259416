"""The synchronous client."""

from __future__ import annotations

import time
from typing import Iterator, List, Optional, Union

import httpx

from . import _protocol as p
from ._config import resolve
from .errors import NotFound
from .files import WorkspaceFile, parse_mode, text_mode
from .models import Change, Entry, ReadResult, Version

Data = Union[bytes, bytearray, memoryview, str]


def _bytes(data: Data) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


class ContextFS:
    """One project of a contextfs server, over its REST API. Keeps no local
    state: every call goes to the server (reads and small writes are one
    HTTP round trip each).

    ``server``, ``token`` and ``project`` default to ``CONTEXTFS_SERVER``,
    ``CONTEXTFS_TOKEN`` and ``CONTEXTFS_PROJECT``, then to the file
    ``contextfs login`` wrote. ``agent_id`` is recorded on every version this
    client writes unless a call names another."""

    def __init__(
        self,
        server: Optional[str] = None,
        token: Optional[str] = None,
        project: Optional[str] = None,
        *,
        agent_id: Optional[str] = None,
        timeout: float = 30.0,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        settings = resolve(server, token, project, need_project=True)
        self.server = settings.server
        self.project: str = settings.project or ""
        self.agent_id = agent_id
        self._http = httpx.Client(
            base_url=settings.server,
            headers={"authorization": f"Bearer {settings.token}", "user-agent": "contextfs-python/0.1"},
            timeout=timeout,
            transport=transport,
        )

    # ----- plumbing -----

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ContextFS":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: p.Call) -> httpx.Response:
        for attempt in range(p.ATTEMPTS):
            last = attempt == p.ATTEMPTS - 1
            try:
                resp = self._http.request(
                    call.method,
                    call.url,
                    params=call.params,
                    json=call.json,
                    content=call.content,
                    headers=call.headers,
                    timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as e:
                if last or not p.is_retryable(e, call):
                    raise p.unavailable(e) from e
            else:
                if last or not (call.retry and resp.status_code in p.RETRY_STATUSES):
                    return p.check(resp)
            time.sleep(p.BACKOFF_SECONDS * 2**attempt)
        raise AssertionError("unreachable")

    def _agent(self, agent_id: Optional[str]) -> Optional[str]:
        return agent_id if agent_id is not None else self.agent_id

    # ----- reading -----

    def checkout(self, path: str, version: Optional[int] = None) -> ReadResult:
        """The content of `path` (its head, or `version`) with the version it is."""
        return p.parse_read(self._send(p.read_call(self.project, path, version)))

    def read(self, path: str, version: Optional[int] = None) -> bytes:
        return self.checkout(path, version).data

    def read_text(self, path: str, version: Optional[int] = None, encoding: str = "utf-8") -> str:
        return self.read(path, version).decode(encoding)

    def stat(self, path: str) -> Version:
        """The head version of a live file or directory (`NotFound` if none)."""
        return p.parse_stat(self._send(p.history_call(self.project, path, None, 1)), path)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except NotFound:
            return False

    def list(self, path: str = "") -> List[Entry]:
        """The direct children of a directory (`""` is the project's root)."""
        return p.parse_entries(self._send(p.tree_call(self.project, path, False)))

    def tree(self, path: str = "") -> List[Entry]:
        """Everything below a directory, sorted by path."""
        return p.parse_entries(self._send(p.tree_call(self.project, path, True)))

    def versions(self, path: str, page_size: int = 100) -> Iterator[Version]:
        """The history of `path`, newest first, fetched a page at a time."""
        before: Optional[int] = None
        while True:
            page, before = p.parse_history(self._send(p.history_call(self.project, path, before, page_size)))
            yield from page
            if before is None:
                return

    def changes(self, since: Optional[int] = None, timeout: float = 30.0) -> Iterator[Change]:
        """Every change in the project after `since` (default: from now on),
        forever: long-polls the change feed and yields events as they land."""
        if since is None:
            since = int(self._send(p.project_call(self.project)).json()["cursor"])
        while True:
            events, since, more = p.parse_changes(self._send(p.changes_call(self.project, since, timeout)))
            yield from events

    # ----- writing -----

    def write(
        self,
        path: str,
        data: Data,
        base_version: Optional[int] = None,
        agent_id: Optional[str] = None,
        message: Optional[str] = None,
        *,
        idempotency_key: Optional[str] = None,
        mtime: p.TimeLike = None,
    ) -> Version:
        """Writes a new version of `path` (parents are created).

        Without `base_version` the content replaces the head (one request).
        With it, it is the version the content was edited from: a concurrent
        change is three-way merged (`status == "merged"`) or, when it cannot
        be, the last writer wins (`"lww"`). Commits carry an idempotency key,
        so a retry after a lost answer never writes twice. `mtime` is the
        file's modification time to record (Unix seconds, an aware
        `datetime`, or RFC 3339); by default the commit time."""
        body = _bytes(data)
        agent = self._agent(agent_id)
        if base_version is None and idempotency_key is None:
            call = p.put_file_call(self.project, path, body, agent, message, p.file_time(mtime))
            if call is not None:
                return p.parse_version(self._send(call))
        if base_version is None:
            try:
                base_version = self.stat(path).version
            except NotFound:
                base_version = None
        return self._commit(path, body, base_version, agent, message, idempotency_key, p.file_time(mtime))

    def _commit(
        self,
        path: str,
        body: bytes,
        base_version: Optional[int],
        agent_id: Optional[str],
        message: Optional[str],
        idempotency_key: Optional[str] = None,
        mtime: Optional[str] = None,
    ) -> Version:
        resp = None
        for call in p.commit_calls(self.project, path, body, base_version, agent_id, message, idempotency_key, mtime):
            resp = self._send(call)
        assert resp is not None
        return p.parse_version(resp)

    def rollback(self, path: str, version: int, agent_id: Optional[str] = None, message: Optional[str] = None) -> Version:
        """A new version of `path` with the content of `version` (restores a deleted file)."""
        body = {"path": p.clean_path(path), "version": version, "agent_id": self._agent(agent_id), "message": message}
        return p.parse_version(self._send(p.post_call(self.project, "/rollback", body, retry=False)))

    def mkdir(self, path: str, mode: Optional[int] = None, agent_id: Optional[str] = None, message: Optional[str] = None) -> Version:
        """Creates a directory and its missing parents (`mkdir -p`)."""
        body = {"path": p.clean_path(path), "mode": mode, "agent_id": self._agent(agent_id), "message": message}
        return p.parse_version(self._send(p.post_call(self.project, "/mkdir", body, retry=True)))

    def move(
        self,
        src: str,
        dst: str,
        overwrite: bool = False,
        agent_id: Optional[str] = None,
        message: Optional[str] = None,
    ) -> Version:
        """Renames (the node and its history move along). An existing `dst`
        is a `Conflict` unless `overwrite`; then it becomes a restorable deletion."""
        body = {
            "from": p.clean_path(src),
            "to": p.clean_path(dst),
            "replace": overwrite,
            "agent_id": self._agent(agent_id),
            "message": message,
        }
        return p.parse_version(self._send(p.post_call(self.project, "/rename", body, retry=False)))

    def delete(
        self, path: str, recursive: bool = False, agent_id: Optional[str] = None, message: Optional[str] = None
    ) -> List[Version]:
        """Deletes (restorable with `rollback`); one tombstone per node."""
        body = {"path": p.clean_path(path), "recursive": recursive, "agent_id": self._agent(agent_id), "message": message}
        return p.parse_deleted(self._send(p.post_call(self.project, "/delete", body, retry=False)))

    # ----- files -----

    def open(
        self,
        path: str,
        mode: str = "r",
        encoding: str = "utf-8",
        newline: Optional[str] = None,
        agent_id: Optional[str] = None,
        message: Optional[str] = None,
    ):
        """A file object: `r`/`rb` read the head; `w`/`wb` start empty and `a`/`ab`
        from the head. A writable file commits on `close()` on top of the
        version it was opened at, so concurrent writers merge."""
        kind, binary = parse_mode(mode)
        agent = self._agent(agent_id)
        if kind == "r":
            found = self.checkout(path)
            raw = WorkspaceFile(path, found.data, found.version, None)
        else:
            initial, base = b"", None
            if kind == "a":
                try:
                    found = self.checkout(path)
                    initial, base = found.data, found.version
                except NotFound:
                    pass
            else:
                try:
                    base = self.stat(path).version
                except NotFound:
                    base = None

            def commit(data: bytes) -> Version:
                return self._commit(path, data, base, agent, message)

            raw = WorkspaceFile(path, initial, base, commit, append=kind == "a", must_commit=kind == "w")
        return raw if binary else text_mode(raw, encoding, newline)
