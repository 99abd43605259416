"""The asyncio client and the fsspec filesystem against a real server."""

from __future__ import annotations

import asyncio

import fsspec
import pytest

from contextfs import AsyncContextFS, ContextFS, NotFound
from contextfs.fsspec import ContextFSFileSystem

from conftest import Project


def test_async_client_reads_writes_pages_and_merges(project: Project) -> None:
    async def scenario() -> None:
        async with AsyncContextFS(server=project.server, token=project.token, project=project.name) as ctx:
            v1 = await ctx.write("a.md", "one\n")
            v2 = await ctx.write("a.md", "one\ntwo\n", base_version=v1.version)
            assert (v1.version, v2.version, v2.status) == (1, 2, "clean")
            assert await ctx.read_text("a.md") == "one\ntwo\n"
            assert [v.version async for v in ctx.versions("a.md", page_size=1)] == [2, 1]
            assert [e.path for e in await ctx.list()] == ["a.md"]
            # Two async writers append from the same version: both lines stay.
            other = AsyncContextFS(server=project.server, token=project.token, project=project.name)
            first, second = ctx.open("a.md", "a"), other.open("a.md", "a")
            f1, f2 = await first.__aenter__(), await second.__aenter__()
            f1.write("three\n")
            f2.write("four\n")
            await first.__aexit__(None, None, None)
            await second.__aexit__(None, None, None)
            assert second.version is not None and second.version.status == "merged"
            assert await ctx.read_text("a.md") == "one\ntwo\nthree\nfour\n"
            # An exception inside the block commits nothing.
            with pytest.raises(RuntimeError):
                async with ctx.open("a.md", "w") as f:
                    f.write("lost\n")
                    raise RuntimeError("boom")
            assert await ctx.read_text("a.md") == "one\ntwo\nthree\nfour\n"
            # The change feed as an async generator.
            feed = ctx.changes(timeout=20)
            pending = asyncio.ensure_future(feed.__anext__())
            await asyncio.sleep(0.2)
            await other.write("b.md", "b\n")
            event = await asyncio.wait_for(pending, timeout=30)
            assert (event.op, event.path) == ("create", "b.md")
            await other.aclose()
            with pytest.raises(NotFound):
                await ctx.read("nope")

    asyncio.run(scenario())


def test_fsspec_url_reads_and_writes_the_workspace(project: Project) -> None:
    opts = {"server": project.server, "token": project.token}
    assert fsspec.get_filesystem_class("contextfs") is ContextFSFileSystem
    url = f"contextfs://{project.name}/data/table.csv"
    with fsspec.open(url, "w", **opts) as f:
        f.write("a,b\n1,2\n")
    with fsspec.open(url, "r", **opts) as f:
        assert f.read() == "a,b\n1,2\n"
    ctx = ContextFS(server=project.server, token=project.token, project=project.name)
    assert ctx.read_text("data/table.csv") == "a,b\n1,2\n"

    fs = fsspec.filesystem("contextfs", **opts)
    root = project.name
    assert fs.ls(f"{root}/data", detail=False) == [f"{root}/data/table.csv"]
    assert fs.isdir(f"{root}/data") and fs.isfile(f"{root}/data/table.csv")
    assert fs.info(f"{root}/data/table.csv")["size"] == 8
    assert fs.cat_file(f"{root}/data/table.csv", start=4) == b"1,2\n"
    fs.pipe_file(f"{root}/raw.bin", b"\x00\xff")
    fs.mv(f"{root}/raw.bin", f"{root}/data/raw.bin")
    assert fs.cat(f"{root}/data/raw.bin") == b"\x00\xff"
    fs.makedirs(f"{root}/empty/dir", exist_ok=True)
    assert fs.isdir(f"{root}/empty/dir")
    fs.rm(f"{root}/data", recursive=True)
    assert not fs.exists(f"{root}/data/table.csv")
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{root}/data/table.csv")
    # The deletion is restorable: the history is still there.
    assert ctx.rollback("data/table.csv", 1).op == "rollback"
    assert ctx.read_text("data/table.csv") == "a,b\n1,2\n"
