"""Drives examples/fake_daytona with Daytona's official Python SDK (pinned in
scripts/py-sdks) through a sandbox's life, as a new user would: the proof that
the fake follows Daytona's published API. tests/daytona.rs runs it.

usage: python daytona_sdk.py API_URL API_KEY SNAPSHOT
Prints one line per step; exits non-zero on the first step that fails.
"""

import sys
import uuid

from daytona import (
    CreateSandboxFromSnapshotParams,
    Daytona,
    DaytonaConfig,
    DaytonaError,
    FileUpload,
    ListSandboxesQuery,
)


def step(name):
    print(f"step: {name}", flush=True)


def main():
    api_url, api_key, snapshot = sys.argv[1:4]
    daytona = Daytona(DaytonaConfig(api_key=api_key, api_url=api_url, target="local"))
    run = uuid.uuid4().hex[:8]

    step("create with labels, auto-stop and auto-delete")
    sandbox = daytona.create(
        CreateSandboxFromSnapshotParams(
            snapshot=snapshot,
            labels={"sdk-test": run},
            env_vars={"GREETING": "hello"},
            auto_stop_interval=15,
            auto_delete_interval=60,
        ),
        timeout=120,
    )
    assert sandbox.state == "started", sandbox.state
    assert sandbox.labels.get("sdk-test") == run, sandbox.labels
    assert sandbox.auto_stop_interval == 15, sandbox.auto_stop_interval
    assert sandbox.auto_delete_interval == 60, sandbox.auto_delete_interval
    assert sandbox.toolbox_proxy_url, "no toolboxProxyUrl"

    step("get and list by label")
    assert daytona.get(sandbox.id).id == sandbox.id
    listed = [s.id for s in daytona.list(ListSandboxesQuery(labels={"sdk-test": run}))]
    assert listed == [sandbox.id], listed
    assert not list(daytona.list(ListSandboxesQuery(labels={"sdk-test": "other"})))

    step("exec")
    response = sandbox.process.exec('echo "$GREETING from $(hostname)"; exit 3')
    assert response.exit_code == 3, response
    assert response.result.startswith("hello from "), response.result
    response = sandbox.process.exec("pwd", cwd="/tmp")
    assert (response.exit_code, response.result.strip()) == (0, "/tmp"), response

    step("upload (single and bulk)")
    sandbox.fs.upload_file(b"one\n", "/tmp/sdk/one.txt")
    sandbox.fs.upload_files(
        [
            FileUpload(source=b"two\n", destination="/tmp/sdk/two.txt"),
            FileUpload(source=bytes(range(256)) * 64, destination="/tmp/sdk/deep/bin.dat"),
        ]
    )

    step("download and list")
    assert sandbox.fs.download_file("/tmp/sdk/one.txt") == b"one\n"
    assert sandbox.fs.download_file("/tmp/sdk/deep/bin.dat") == bytes(range(256)) * 64
    names = sorted(f.name for f in sandbox.fs.list_files("/tmp/sdk"))
    assert names == ["deep", "one.txt", "two.txt"], names
    info = {f.name: f for f in sandbox.fs.list_files("/tmp/sdk")}
    assert info["deep"].is_dir and not info["two.txt"].is_dir and info["two.txt"].size == 4
    try:
        sandbox.fs.download_file("/tmp/sdk/missing.txt")
        raise AssertionError("downloading a missing file succeeded")
    except DaytonaError as e:
        print(f"  missing file: {e}", flush=True)

    step("stop")
    sandbox.stop(timeout=60)
    assert sandbox.state == "stopped", sandbox.state
    assert daytona.get(sandbox.id).state == "stopped"

    step("start")
    sandbox.start(timeout=60)
    assert sandbox.state == "started", sandbox.state

    step("exec again: the files survived the stop")
    response = sandbox.process.exec("cat /tmp/sdk/one.txt /tmp/sdk/two.txt")
    assert (response.exit_code, response.result) == (0, "one\ntwo\n"), response

    step("delete")
    sandbox.delete()
    try:
        daytona.get(sandbox.id)
        raise AssertionError("the deleted sandbox is still there")
    except DaytonaError as e:
        print(f"  after delete: {e}", flush=True)
    assert not list(daytona.list(ListSandboxesQuery(labels={"sdk-test": run})))
    print("OK", flush=True)


if __name__ == "__main__":
    main()
