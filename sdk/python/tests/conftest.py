"""Starts a real `contextfs serve` for the test run (the binary from
CONTEXTFS_BIN, else the repository's target/debug/contextfs) and gives each
test its own project and read-write token."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest

ADMIN = "cfs_admin_python_sdk_test_secret"
#: Small enough that the TooLarge test stays small.
MAX_BLOB_BYTES = 4 << 20
REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Server:
    url: str
    admin: str


@dataclass(frozen=True)
class Project:
    server: str
    name: str
    token: str
    admin: str

    def token_with(self, access: str) -> str:
        r = httpx.post(
            f"{self.server}/api/v1/projects/{self.name}/tokens",
            headers={"authorization": f"Bearer {self.admin}"},
            json={"access": access},
        )
        r.raise_for_status()
        return r.json()["token"]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binary = os.environ.get("CONTEXTFS_BIN") or str(REPO / "target" / "debug" / "contextfs")
    assert Path(binary).exists(), f"{binary} is missing: build it with `cargo build` (scripts/test does)"
    data = tmp_path_factory.mktemp("contextfs-data")
    env = dict(os.environ, CONTEXTFS_ADMIN_TOKEN=ADMIN)
    proc = subprocess.Popen(
        [binary, "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--max-blob-bytes", str(MAX_BLOB_BYTES)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: "queue.Queue[str]" = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    url = None
    seen = []
    while url is None:
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            proc.kill()
            pytest.fail(f"contextfs serve did not start: {''.join(seen)}")
        seen.append(line)
        if line.startswith("listening on "):
            url = line.split("listening on ", 1)[1].strip()
    try:
        yield Server(url=url, admin=ADMIN)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def project(server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Project:
    # No test reads the developer's own login or environment by accident.
    for var in ("CONTEXTFS_SERVER", "CONTEXTFS_TOKEN", "CONTEXTFS_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    name = f"p-{uuid.uuid4().hex[:12]}"
    admin = {"authorization": f"Bearer {server.admin}"}
    httpx.post(f"{server.url}/api/v1/projects", headers=admin, json={"name": name}).raise_for_status()
    r = httpx.post(f"{server.url}/api/v1/projects/{name}/tokens", headers=admin, json={"access": "read-write"})
    r.raise_for_status()
    return Project(server=server.url, name=name, token=r.json()["token"], admin=server.admin)
