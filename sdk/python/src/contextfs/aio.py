"""The asyncio client: the same calls as `ContextFS`, awaited."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, List, Optional

import httpx

from . import _protocol as p
from ._config import resolve
from .client import Data, _bytes
from .errors import NotFound
from .files import WorkspaceFile, parse_mode, text_mode
from .models import Change, Entry, ReadResult, Version


class AsyncContextFS:
    """`ContextFS` for asyncio code; see it for what each method does."""

    def __init__(
        self,
        server: Optional[str] = None,
        token: Optional[str] = None,
        project: Optional[str] = None,
        *,
        agent_id: Optional[str] = None,
        timeout: float = 30.0,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        settings = resolve(server, token, project, need_project=True)
        self.server = settings.server
        self.project: str = settings.project or ""
        self.agent_id = agent_id
        self._http = httpx.AsyncClient(
            base_url=settings.server,
            headers={"authorization": f"Bearer {settings.token}", "user-agent": "contextfs-python/0.1"},
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncContextFS":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: p.Call) -> httpx.Response:
        for attempt in range(p.ATTEMPTS):
            last = attempt == p.ATTEMPTS - 1
            try:
                resp = await self._http.request(
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
            await asyncio.sleep(p.BACKOFF_SECONDS * 2**attempt)
        raise AssertionError("unreachable")

    def _agent(self, agent_id: Optional[str]) -> Optional[str]:
        return agent_id if agent_id is not None else self.agent_id

    async def checkout(self, path: str, version: Optional[int] = None) -> ReadResult:
        return p.parse_read(await self._send(p.read_call(self.project, path, version)))

    async def read(self, path: str, version: Optional[int] = None) -> bytes:
        return (await self.checkout(path, version)).data

    async def read_text(self, path: str, version: Optional[int] = None, encoding: str = "utf-8") -> str:
        return (await self.read(path, version)).decode(encoding)

    async def stat(self, path: str) -> Version:
        return p.parse_stat(await self._send(p.history_call(self.project, path, None, 1)), path)

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
            return True
        except NotFound:
            return False

    async def list(self, path: str = "") -> List[Entry]:
        return p.parse_entries(await self._send(p.tree_call(self.project, path, False)))

    async def tree(self, path: str = "") -> List[Entry]:
        return p.parse_entries(await self._send(p.tree_call(self.project, path, True)))

    async def versions(self, path: str, page_size: int = 100) -> AsyncIterator[Version]:
        before: Optional[int] = None
        while True:
            page, before = p.parse_history(await self._send(p.history_call(self.project, path, before, page_size)))
            for v in page:
                yield v
            if before is None:
                return

    async def changes(self, since: Optional[int] = None, timeout: float = 30.0) -> AsyncIterator[Change]:
        if since is None:
            since = int((await self._send(p.project_call(self.project))).json()["cursor"])
        while True:
            events, since, _ = p.parse_changes(await self._send(p.changes_call(self.project, since, timeout)))
            for e in events:
                yield e

    async def write(
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
        body = _bytes(data)
        agent = self._agent(agent_id)
        if base_version is None and idempotency_key is None:
            call = p.put_file_call(self.project, path, body, agent, message, p.file_time(mtime))
            if call is not None:
                return p.parse_version(await self._send(call))
        if base_version is None:
            try:
                base_version = (await self.stat(path)).version
            except NotFound:
                base_version = None
        return await self._commit(path, body, base_version, agent, message, idempotency_key, p.file_time(mtime))

    async def _commit(
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
            resp = await self._send(call)
        assert resp is not None
        return p.parse_version(resp)

    async def rollback(
        self, path: str, version: int, agent_id: Optional[str] = None, message: Optional[str] = None
    ) -> Version:
        body = {"path": p.clean_path(path), "version": version, "agent_id": self._agent(agent_id), "message": message}
        return p.parse_version(await self._send(p.post_call(self.project, "/rollback", body, retry=False)))

    async def mkdir(
        self, path: str, mode: Optional[int] = None, agent_id: Optional[str] = None, message: Optional[str] = None
    ) -> Version:
        body = {"path": p.clean_path(path), "mode": mode, "agent_id": self._agent(agent_id), "message": message}
        return p.parse_version(await self._send(p.post_call(self.project, "/mkdir", body, retry=True)))

    async def move(
        self, src: str, dst: str, overwrite: bool = False, agent_id: Optional[str] = None, message: Optional[str] = None
    ) -> Version:
        body = {
            "from": p.clean_path(src),
            "to": p.clean_path(dst),
            "replace": overwrite,
            "agent_id": self._agent(agent_id),
            "message": message,
        }
        return p.parse_version(await self._send(p.post_call(self.project, "/rename", body, retry=False)))

    async def delete(
        self, path: str, recursive: bool = False, agent_id: Optional[str] = None, message: Optional[str] = None
    ) -> List[Version]:
        body = {"path": p.clean_path(path), "recursive": recursive, "agent_id": self._agent(agent_id), "message": message}
        return p.parse_deleted(await self._send(p.post_call(self.project, "/delete", body, retry=False)))

    def open(self, path: str, mode: str = "r", encoding: str = "utf-8", newline: Optional[str] = None,
             agent_id: Optional[str] = None, message: Optional[str] = None) -> "AsyncOpen":
        """`async with ctx.open(path, "a") as f: f.write(...)`: reads on entry,
        commits on exit on top of the version it read."""
        return AsyncOpen(self, path, mode, encoding, newline, self._agent(agent_id), message)


class AsyncOpen:
    """The async context manager `AsyncContextFS.open` returns."""

    def __init__(self, ctx: AsyncContextFS, path: str, mode: str, encoding: str, newline: Optional[str],
                 agent_id: Optional[str], message: Optional[str]) -> None:
        self._ctx, self._path, self._mode = ctx, path, mode
        self._encoding, self._newline = encoding, newline
        self._agent, self._message = agent_id, message
        self._raw: Optional[WorkspaceFile] = None
        self._file = None
        #: After exit: the version the commit produced, if any.
        self.version: Optional[Version] = None

    async def __aenter__(self):
        kind, binary = parse_mode(self._mode)
        initial, base = b"", None
        if kind in ("r", "a"):
            try:
                found = await self._ctx.checkout(self._path)
                initial, base = found.data, found.version
            except NotFound:
                if kind == "r":
                    raise
        else:
            try:
                base = (await self._ctx.stat(self._path)).version
            except NotFound:
                base = None
        pending: List[bytes] = []

        def capture(data: bytes) -> Version:
            # close() runs synchronously; the commit happens in __aexit__.
            pending.append(data)
            return None  # type: ignore[return-value]

        self._pending = pending
        self._base = base
        commit = None if kind == "r" else capture
        self._raw = WorkspaceFile(self._path, initial, base, commit, append=kind == "a", must_commit=kind == "w")
        self._file = self._raw if binary else text_mode(self._raw, self._encoding, self._newline)
        return self._file

    async def __aexit__(self, exc_type, exc, tb) -> None:
        assert self._file is not None
        if exc_type is not None:
            # An error inside the block: nothing is committed.
            self._raw._commit = None  # type: ignore[union-attr]
        self._file.close()
        if self._pending:
            self.version = await self._ctx._commit(self._path, self._pending[-1], self._base, self._agent, self._message)
