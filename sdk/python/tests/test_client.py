"""The synchronous client against a real server."""

from __future__ import annotations

import threading
from typing import List

import httpx
import pytest

from contextfs import (
    ConfigError,
    Conflict,
    ContextFS,
    Forbidden,
    InvalidRequest,
    NotFound,
    ServerUnavailable,
    TooLarge,
    Unauthorized,
)

from conftest import MAX_BLOB_BYTES, Project


class CountingTransport(httpx.HTTPTransport):
    """Counts the HTTP requests the client sends."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: List[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        return super().handle_request(request)


class LoseFirstAnswer(httpx.HTTPTransport):
    """Delivers the first request matching `method path-suffix` to the server,
    then drops its answer, as a connection reset after the send would."""

    def __init__(self, method: str, suffix: str) -> None:
        super().__init__()
        self.method, self.suffix = method, suffix
        self.dropped = 0
        self.sent: List[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(f"{request.method} {request.url.path}")
        response = super().handle_request(request)
        if not self.dropped and request.method == self.method and request.url.path.endswith(self.suffix):
            response.read()
            self.dropped += 1
            raise httpx.ReadError("connection reset after the request was sent", request=request)
        return response


def client(p: Project, **kw) -> ContextFS:
    return ContextFS(server=p.server, token=p.token, project=p.name, **kw)


def test_read_and_write_are_one_round_trip_each(project: Project) -> None:
    transport = CountingTransport()
    ctx = client(project, transport=transport)
    v1 = ctx.write("notes/today.md", "# Today\n", agent_id="agent-1", message="start")
    assert transport.requests == [f"PUT /api/v1/projects/{project.name}/files/notes/today.md"]
    assert (v1.version, v1.status, v1.agent_id, v1.message) == (1, "clean", "agent-1", "start")

    transport.requests.clear()
    assert ctx.read("notes/today.md") == b"# Today\n"
    assert ctx.read_text("notes/today.md") == "# Today\n"
    assert len(transport.requests) == 2

    transport.requests.clear()
    v2 = ctx.write("notes/today.md", "# Today\n- one\n", base_version=v1.version)
    assert transport.requests == [f"POST /api/v1/projects/{project.name}/commit"]
    assert (v2.version, v2.status, v2.parent) == (2, "clean", 1)
    assert ctx.read("notes/today.md", version=1) == b"# Today\n"


def test_write_status_is_clean_merged_or_lww(project: Project) -> None:
    ctx = client(project)
    v1 = ctx.write("log.md", "# Log\n- start\n")
    a = ctx.write("log.md", "# Log\n- start\n- a: tests pass\n", base_version=v1.version)
    b = ctx.write("log.md", "# Log\n- start\n- b: docs\n", base_version=v1.version)
    assert (a.status, b.status) == ("clean", "merged")
    assert ctx.read_text("log.md") == "# Log\n- start\n- a: tests pass\n- b: docs\n"
    c = ctx.write("log.md", "# Changed title\n- start\n", base_version=b.version)
    d = ctx.write("log.md", "# Another title\n- start\n", base_version=b.version)
    assert (c.status, d.status) == ("clean", "lww")
    # Larger than the inline limit: a blob upload, then the commit.
    big = bytes(range(256)) * 5000
    v = ctx.write("big.bin", big, base_version=None, idempotency_key="big-1")
    assert ctx.read("big.bin") == big and v.size == len(big)


def test_versions_are_paged_and_rollback_restores(project: Project) -> None:
    ctx = client(project)
    for i in range(5):
        ctx.write("state.txt", f"state {i}\n")
    history = list(ctx.versions("state.txt", page_size=2))
    assert [v.version for v in history] == [5, 4, 3, 2, 1]
    back = ctx.rollback("state.txt", 2, message="undo")
    assert (back.version, back.op, back.message) == (6, "rollback", "undo")
    assert ctx.read_text("state.txt") == "state 1\n"


def test_namespace_calls(project: Project) -> None:
    ctx = client(project)
    ctx.mkdir("research/papers")
    ctx.write("research/papers/a.md", "a\n")
    ctx.write("research/b.md", "b\n")
    assert [e.name for e in ctx.list("research")] == ["b.md", "papers"]
    assert [e.path for e in ctx.list()] == ["research"]
    assert [e.path for e in ctx.tree()] == ["research", "research/b.md", "research/papers", "research/papers/a.md"]
    node = ctx.stat("research/b.md").node
    moved = ctx.move("research/b.md", "archive/b.md")
    assert (moved.node, moved.op) == (node, "rename")
    with pytest.raises(Conflict) as exists:
        ctx.move("research/papers/a.md", "archive/b.md")
    assert exists.value.code == "exists"
    ctx.move("research/papers/a.md", "archive/b.md", overwrite=True)
    assert ctx.read_text("archive/b.md") == "a\n"
    deleted = ctx.delete("research", recursive=True)
    assert deleted[0].path == "research" and all(v.deleted for v in deleted)
    assert not ctx.exists("research/papers")
    with pytest.raises(NotFound):
        ctx.stat("research")


def test_typed_errors(project: Project) -> None:
    ctx = client(project)
    with pytest.raises(NotFound):
        ctx.read("nope.md")
    with pytest.raises(Unauthorized):
        ContextFS(server=project.server, token="cfs_" + "0" * 48, project=project.name).read("x")
    reader = ContextFS(server=project.server, token=project.token_with("read"), project=project.name)
    with pytest.raises(Forbidden):
        reader.write("x.md", "x")
    v1 = ctx.write("plan.md", "plan\n")
    with pytest.raises(Conflict) as stale:
        ctx.write("plan.md", "new\n", base_version=99)
    assert stale.value.code == "base_version_unknown"
    assert stale.value.head is not None and stale.value.head.version == v1.version
    with pytest.raises(TooLarge):
        ctx.write("huge.bin", b"\0" * (MAX_BLOB_BYTES + 1))
    with pytest.raises(InvalidRequest):
        ctx.write("a/../b.md", "x")
    with pytest.raises(ServerUnavailable):
        ContextFS(server="http://127.0.0.1:9", token="t", project="p").read("x")
    assert [v.version for v in ctx.versions("plan.md")] == [1]


def test_a_retry_after_a_lost_answer_writes_once(project: Project) -> None:
    flaky = LoseFirstAnswer("POST", "/commit")
    ctx = client(project, transport=flaky)
    v = ctx.write("once.md", "once\n", base_version=None, idempotency_key="job-42")
    assert flaky.dropped == 1 and flaky.sent.count(f"POST /api/v1/projects/{project.name}/commit") == 2
    assert v.version == 1
    assert [x.version for x in client(project).versions("once.md")] == [1]

    lost_put = LoseFirstAnswer("PUT", "/files/plain.md")
    ctx = client(project, transport=lost_put)
    assert ctx.write("plain.md", "plain\n").version == 1
    assert lost_put.dropped == 1
    assert [x.version for x in client(project).versions("plain.md")] == [1]


def test_open_files_commit_on_close_and_two_agents_merge(project: Project) -> None:
    a, b = client(project, agent_id="a"), client(project, agent_id="b")
    a.write("journal.md", "# Journal\n")
    fa = a.open("journal.md", "a")
    fb = b.open("journal.md", "a")
    fa.write("- a was here\n")
    fb.write("- b was here\n")
    fa.close()
    fb.close()
    assert a.read_text("journal.md") == "# Journal\n- a was here\n- b was here\n"
    assert fb.buffer.version.status == "merged"

    with a.open("data.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert a.read("data.bin") == b"\x00\x01"
    with a.open("data.bin", "rb") as f:
        assert f.read() == b"\x00\x01"
        with pytest.raises(Exception):
            f.write(b"x")
    with a.open("journal.md") as f:
        assert f.readline() == "# Journal\n"
    with a.open("fresh.txt", "w") as f:
        f.write("fresh\n")
    assert a.read_text("fresh.txt") == "fresh\n"
    with pytest.raises(NotFound):
        a.open("missing.txt", "r")


def test_changes_yields_what_others_write(project: Project) -> None:
    ctx = client(project)
    feed = ctx.changes(timeout=20)
    writer = client(project, agent_id="writer")

    def later() -> None:
        writer.write("inbox/msg.md", "hi\n")

    # The feed starts from now: the first event is the writer's.
    thread = threading.Timer(0.5, later)
    thread.start()
    events = [next(feed), next(feed)]
    thread.join()
    assert [(e.op, e.path) for e in events] == [("mkdir", "inbox"), ("create", "inbox/msg.md")]
    assert events[1].agent_id == "writer"


def test_settings_come_from_the_environment_then_the_login_file(project: Project, monkeypatch, tmp_path) -> None:
    with pytest.raises(ConfigError):
        ContextFS()
    monkeypatch.setenv("CONTEXTFS_SERVER", project.server)
    monkeypatch.setenv("CONTEXTFS_TOKEN", project.token)
    monkeypatch.setenv("CONTEXTFS_PROJECT", project.name)
    ContextFS().write("env.md", "env\n")
    for var in ("CONTEXTFS_SERVER", "CONTEXTFS_TOKEN", "CONTEXTFS_PROJECT"):
        monkeypatch.delenv(var)
    conf = tmp_path / "config" / "contextfs" / "config.toml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f'server = "{project.server}"\ntoken = "{project.token}"\nproject = "{project.name}"\n')
    assert ContextFS().read_text("env.md") == "env\n"


def test_write_records_the_file_time_it_is_given(project: Project) -> None:
    from datetime import datetime, timezone

    ctx = client(project)
    v = ctx.write("dated.md", "old\n", mtime=1577934245)
    assert v.mtime == "2020-01-02T03:04:05.000000000Z"
    v2 = ctx.write("dated.md", "newer\n", base_version=v.version, mtime=datetime(2021, 5, 6, 7, 8, 9, tzinfo=timezone.utc))
    assert v2.mtime == "2021-05-06T07:08:09.000000000Z"
    assert ctx.stat("dated.md").mtime == v2.mtime
    with pytest.raises(InvalidRequest):
        ctx.write("dated.md", "x\n", mtime="yesterday")
    assert [x.version for x in ctx.versions("dated.md")] == [2, 1]
