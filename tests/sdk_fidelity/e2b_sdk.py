"""Drives examples/fake_e2b with E2B's official Python SDK (pinned in
scripts/py-sdks): the proof that the fake follows E2B's published API (the
REST control plane and envd). tests/e2b.rs runs it with E2B_API_URL and
E2B_SANDBOX_URL pointing at the fake and E2B_HTTP_VERSION=1.1.

usage: python e2b_sdk.py API_KEY TEMPLATE
Prints one line per step; exits non-zero on the first step that fails.
"""

import sys
import uuid

from e2b import Sandbox, SandboxQuery
from e2b.exceptions import AuthenticationException, NotFoundException, SandboxException


def step(name):
    print(f"step: {name}", flush=True)


def main():
    api_key, template = sys.argv[1:3]
    run = uuid.uuid4().hex[:8]

    step("bad key")
    try:
        Sandbox.create(template, api_key="e2b_wrong")
        raise AssertionError("a wrong API key created a sandbox")
    except AuthenticationException as e:
        print(f"  bad key: {e}", flush=True)

    step("create with metadata and timeout")
    sandbox = Sandbox.create(
        template,
        api_key=api_key,
        timeout=120,
        metadata={"sdk-test": run, "thread_id": "t1"},
        envs={"GREETING": "hello"},
    )
    info = sandbox.get_info()
    assert info.metadata.get("sdk-test") == run, info.metadata
    assert sandbox.is_running()

    step("list by metadata")
    listed = [s.sandbox_id for s in Sandbox.list(api_key=api_key, query=SandboxQuery(metadata={"sdk-test": run})).next_items()]
    assert listed == [sandbox.sandbox_id], listed

    step("commands.run")
    result = sandbox.commands.run('echo "$GREETING from $(pwd)"; echo oops >&2')
    assert result.exit_code == 0, result
    assert result.stdout == "hello from /home/user\n", result.stdout
    assert result.stderr == "oops\n", result.stderr
    try:
        sandbox.commands.run("exit 3")
        raise AssertionError("a failing command did not raise")
    except SandboxException as e:
        assert getattr(e, "exit_code", None) == 3, e
    result = sandbox.commands.run("pwd", cwd="/tmp", envs={"X": "1"})
    assert result.stdout == "/tmp\n", result.stdout

    step("files.write and files.read")
    sandbox.files.write("/tmp/e2b/one.txt", "one\n")
    sandbox.files.write("notes/two.txt", b"two\n")
    assert sandbox.files.read("/tmp/e2b/one.txt") == "one\n"
    assert sandbox.files.read("/home/user/notes/two.txt", format="bytes") == bytearray(b"two\n")
    assert sandbox.commands.run("cat /tmp/e2b/one.txt notes/two.txt").stdout == "one\ntwo\n"
    try:
        sandbox.files.read("/tmp/e2b/missing.txt")
        raise AssertionError("reading a missing file succeeded")
    except NotFoundException as e:
        print(f"  missing file: {e}", flush=True)

    step("set_timeout")
    sandbox.set_timeout(60)
    assert sandbox.get_info().end_at > info.started_at

    step("kill")
    sandbox.kill()
    assert not sandbox.is_running()
    assert not Sandbox.list(api_key=api_key, query=SandboxQuery(metadata={"sdk-test": run})).next_items()
    print("OK", flush=True)


if __name__ == "__main__":
    main()
