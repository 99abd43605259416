"""The REST API (docs/HTTP_API.md) as request descriptions and answer
parsers, shared by the sync and the async client, which only send them."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, Union
from urllib.parse import quote

import blake3
import httpx

from . import errors
from .models import Change, Entry, ReadResult, Version

API = "/api/v1"
TimeLike = Union[None, int, float, str, datetime]
#: Content up to this size travels inside the commit request (one round trip).
INLINE_LIMIT = 1 << 20
#: Statuses worth sending a request again for.
RETRY_STATUSES = frozenset({502, 503, 504})
ATTEMPTS = 4
BACKOFF_SECONDS = 0.2


@dataclass
class Call:
    method: str
    url: str
    params: Optional[Dict[str, Any]] = None
    json: Any = None
    content: Optional[bytes] = None
    headers: Dict[str, str] = field(default_factory=dict)
    #: True when sending it twice does no harm (reads, blob uploads, commits
    #: with an idempotency key, overwrites). Other calls are resent only when
    #: the first attempt never reached the server.
    retry: bool = False
    timeout: Optional[float] = None


def clean_path(path: str) -> str:
    """`path` without surrounding slashes, refused (`InvalidRequest`) when it
    has an empty, `.` or `..` segment or a NUL: HTTP clients would silently
    normalise `a/../b` into `b` and write somewhere else."""
    clean = path.strip("/")
    for seg in clean.split("/") if clean else []:
        if seg in ("", ".", "..") or "\0" in seg:
            raise errors.InvalidRequest(f"path {path!r} has an empty, '.' or '..' segment or a NUL", code="invalid_path")
    return clean


def file_path(path: str) -> str:
    """A workspace path for a URL, each segment percent-encoded."""
    clean = clean_path(path)
    if not clean:
        raise errors.InvalidRequest("a file path is needed (the project root is a directory)")
    return "/".join(quote(seg, safe="") for seg in clean.split("/"))


def project_url(project: str, rest: str) -> str:
    return f"{API}/projects/{quote(project, safe='')}{rest}"


def content_hash(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def new_idempotency_key() -> str:
    return f"sdk-{uuid.uuid4().hex}"


def _visible_ascii(value: Optional[str]) -> bool:
    return value is None or all(0x20 <= ord(c) < 0x7F for c in value)


# ----- requests --------------------------------------------------------------


def read_call(project: str, path: str, version: Optional[int]) -> Call:
    params = {"version": version} if version is not None else None
    return Call("GET", project_url(project, f"/files/{file_path(path)}"), params=params, retry=True)


def file_time(value: "TimeLike") -> Optional[str]:
    """A file time for the API: Unix seconds (int/float), a timezone-aware
    `datetime`, or a string the server parses (RFC 3339 or Unix seconds)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise errors.InvalidRequest("mtime: give a timezone-aware datetime", code="invalid_field")
        return value.isoformat()
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    return str(value)


def put_file_call(
    project: str,
    path: str,
    data: bytes,
    agent_id: Optional[str],
    message: Optional[str],
    mtime: Optional[str] = None,
) -> Optional[Call]:
    """One-call overwrite (the server bases it on the head); `None` when the
    metadata cannot travel in headers (not visible ASCII)."""
    if not (_visible_ascii(agent_id) and _visible_ascii(message)):
        return None
    headers = {}
    if agent_id is not None:
        headers["x-contextfs-agent"] = agent_id
    if message is not None:
        headers["x-contextfs-message"] = message
    if mtime is not None:
        headers["x-contextfs-mtime"] = mtime
    # Resending the same bytes is a no-op once the first landed.
    return Call("PUT", project_url(project, f"/files/{file_path(path)}"), content=data, headers=headers, retry=True)


def commit_calls(
    project: str,
    path: str,
    data: bytes,
    base_version: Optional[int],
    agent_id: Optional[str],
    message: Optional[str],
    idempotency_key: Optional[str] = None,
    mtime: Optional[str] = None,
) -> List[Call]:
    """A commit on top of `base_version` (`None`: a new file, merged against an
    empty base if one appeared meanwhile). Small content is inline: one call."""
    digest = content_hash(data)
    body: Dict[str, Any] = {
        "path": clean_path(path),
        "hash": digest,
        "base_version": base_version,
        "agent_id": agent_id,
        "message": message,
        "idempotency_key": idempotency_key or new_idempotency_key(),
    }
    if mtime is not None:
        body["mtime"] = mtime
    calls = []
    if len(data) <= INLINE_LIMIT:
        body["content_base64"] = base64.b64encode(data).decode("ascii")
    else:
        calls.append(Call("PUT", project_url(project, f"/blobs/{digest}"), content=data, retry=True))
    calls.append(Call("POST", project_url(project, "/commit"), json=body, retry=True))
    return calls


def history_call(project: str, path: str, before: Optional[int], limit: int) -> Call:
    params: Dict[str, Any] = {"path": clean_path(path), "limit": limit}
    if before is not None:
        params["before"] = before
    return Call("GET", project_url(project, "/history"), params=params, retry=True)


def tree_call(project: str, prefix: str, recursive: bool) -> Call:
    params: Dict[str, Any] = {"recursive": "true" if recursive else "false"}
    if clean_path(prefix):
        params["prefix"] = clean_path(prefix)
    return Call("GET", project_url(project, "/tree"), params=params, retry=True)


def post_call(project: str, route: str, body: Dict[str, Any], retry: bool) -> Call:
    return Call("POST", project_url(project, route), json={k: v for k, v in body.items() if v is not None}, retry=retry)


def project_call(project: str) -> Call:
    return Call("GET", project_url(project, ""), retry=True)


def changes_call(project: str, since: int, timeout: float) -> Call:
    params = {"since": since, "timeout_ms": int(timeout * 1000)}
    # The client waits a little longer than the server holds the poll.
    return Call("GET", project_url(project, "/changes"), params=params, retry=True, timeout=timeout + 15)


# ----- answers ---------------------------------------------------------------

_BY_STATUS: Dict[int, Type[errors.ContextFSError]] = {
    400: errors.InvalidRequest,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.TooLarge,
}


def error_for(resp: httpx.Response) -> errors.ContextFSError:
    code, message, head = "", resp.text, None
    try:
        detail = resp.json()["error"]
        code, message = detail.get("code", ""), detail.get("message", message)
        if detail.get("head"):
            head = Version.from_json(detail["head"])
    except (ValueError, KeyError, TypeError):
        pass
    status = resp.status_code
    if status == 409:
        return errors.Conflict(message, status=status, code=code, head=head)
    if status >= 500:
        return errors.ServerUnavailable(message, status=status, code=code)
    cls = _BY_STATUS.get(status, errors.ContextFSError)
    return cls(message, status=status, code=code)


def check(resp: httpx.Response) -> httpx.Response:
    if resp.status_code >= 400:
        raise error_for(resp)
    return resp


def parse_read(resp: httpx.Response) -> ReadResult:
    h = resp.headers
    return ReadResult(
        data=resp.content,
        node=int(h.get("x-contextfs-node", "0")),
        version=int(h.get("x-contextfs-version", "0")),
        hash=h.get("x-contextfs-hash", ""),
        status=h.get("x-contextfs-status", ""),
    )


def parse_version(resp: httpx.Response) -> Version:
    return Version.from_json(resp.json())


def parse_history(resp: httpx.Response) -> Tuple[List[Version], Optional[int]]:
    page = resp.json()
    return [Version.from_json(v) for v in page["versions"]], page.get("next_before")


def parse_stat(resp: httpx.Response, path: str) -> Version:
    versions, _ = parse_history(resp)
    if not versions or versions[0].deleted:
        raise errors.NotFound(f"{path} does not exist", status=404, code="not_found")
    return versions[0]


def parse_entries(resp: httpx.Response) -> List[Entry]:
    return [Entry.from_json(e) for e in resp.json()["entries"]]


def parse_deleted(resp: httpx.Response) -> List[Version]:
    return [Version.from_json(v) for v in resp.json()["deleted"]]


def parse_changes(resp: httpx.Response) -> Tuple[List[Change], int, bool]:
    page = resp.json()
    return [Change.from_json(e) for e in page["events"]], page["cursor"], page.get("more", False)


def is_retryable(exc: BaseException, call: Call) -> bool:
    """Connection failures before the request was sent are always safe to
    retry; anything later only for calls marked `retry`."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return True
    return call.retry and isinstance(exc, httpx.TransportError)


def unavailable(exc: BaseException) -> errors.ServerUnavailable:
    return errors.ServerUnavailable(f"the server could not be reached: {exc}")


Parser = Callable[[httpx.Response], Any]
