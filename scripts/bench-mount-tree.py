#!/usr/bin/env python3
"""Measurement helper for scripts/bench-mount (standard library only).

Each measuring subcommand appends one JSON record to --out:
    {"test": ..., "target": ..., <numbers>}
and `report` turns the records into the Markdown section and the terminal
table. With `--requests-of MNT` (the root of an examples/fuse_floor mount),
a measuring subcommand also records the FUSE requests the floor received
during the timed part, per kind. Subcommands:

  seed URL TOKEN PROJECT --prefix P --files N [--per-dir K] [--concurrency C]
        create N small files (40-400 B) on the server, in directories of K
        files (K=0: all in P itself), C requests at once: `POST .../mkdir`
        for each directory, `PUT .../files/{path}` for the first 256 files
        and `POST .../commit` reusing one of those 256 blobs for the rest
  mktree DIR --files N [--per-dir K]     the same tree as plain files
  read FILE [--reps R]                    sequential read(s), 1 MiB requests (median of R)
  stat DIR --files N [--per-dir K]        os.stat of every file of the tree
  readdir DIR --reps R                    os.listdir R times
  small DIR --files N [--fsync] [--server URL TOKEN PROJECT PREFIX]
        mkdir DIR, then create + write 4 KiB + close N files; with --server
        also wait until the server's tree lists all N with the right size
  untar TARBALL DIR [--server URL TOKEN PROJECT PREFIX]
        `tar --no-same-owner -xf TARBALL -C DIR` (gzip or plain), then (with
        --server) wait until every regular file is on the server with the
        right size
  mknm TAR --files N --dirs D [--seed S]
        write a plain tar of a node_modules-like tree: D directories 4-8
        levels deep, N files of 10-2,000 bytes, the same bytes for the same
        arguments
  mkdirs DIR --dirs N [--server ...]      mkdir N directories on 3 levels (10, 90, the rest)
  rmdirs DIR --dirs N                     rmdir the same, deepest first
  renames DIR --files N [--settle S] [--server ...]
        create N 100-byte files (untimed; with --server until committed),
        pause S seconds, then rename each in place
  unlinks DIR --files N [--server ...]    unlink the files `renames` left
  seqwrite FILE --mb N                    write N MiB in 1 MiB writes, fsync, close
  stracec FILE --ops N                    an `strace -c -o FILE` summary as a record
  rss PID                                 VmRSS / VmHWM of a process, in MB
  report RESULTS META                     Markdown section (stdout) + table (stderr)
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse

MB = 1_000_000


# ----- HTTP -----------------------------------------------------------------


class Api:
    """A tiny REST client: one keep-alive connection per thread."""

    def __init__(self, url, token):
        u = urllib.parse.urlsplit(url)
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            sys.exit(f"bench-mount-tree: refusing non-loopback server {url}")
        self.host, self.port = u.hostname, u.port or 80
        self.token = token
        self.local = threading.local()

    def conn(self):
        c = getattr(self.local, "conn", None)
        if c is None:
            c = http.client.HTTPConnection(self.host, self.port, timeout=120)
            self.local.conn = c
        return c

    def request(self, method, path, body=None, headers=None):
        h = {"Authorization": f"Bearer {self.token}"}
        if headers:
            h.update(headers)
        for attempt in range(5):
            c = self.conn()
            try:
                c.request(method, path, body=body, headers=h)
                r = c.getresponse()
                data = r.read()
            except (ConnectionError, http.client.HTTPException, OSError):
                c.close()
                self.local.conn = None
                if attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))
                continue
            if r.status == 503 and attempt < 4:
                time.sleep(0.1 * (attempt + 1))
                continue
            if r.status >= 300:
                raise HttpError(r.status, f"{method} {path}: HTTP {r.status}: {data[:300]!r}")
            return data
        raise RuntimeError("unreachable")

    def put_file(self, project, path, body):
        q = urllib.parse.quote(path)
        return self.request("PUT", f"/api/v1/projects/{project}/files/{q}", body)

    def mkdir(self, project, path):
        body = json.dumps({"path": path}).encode()
        return self.request("POST", f"/api/v1/projects/{project}/mkdir", body, {"Content-Type": "application/json"})

    def tree(self, project, prefix, missing_ok=False):
        """The listing below `prefix`; with `missing_ok`, an empty one while
        `prefix` itself is not on the server yet."""
        q = urllib.parse.urlencode({"prefix": prefix, "recursive": "true"})
        try:
            return json.loads(self.request("GET", f"/api/v1/projects/{project}/tree?{q}"))
        except HttpError as e:
            if missing_ok and e.status == 404:
                return {"entries": []}
            raise


class HttpError(RuntimeError):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def wait_committed(api, project, prefix, expected, dirs=(), timeout=None):
    """Polls the server's tree until every path in `expected` (path -> size)
    is listed as a file of that size and every path in `dirs` as a
    directory. Returns the time it was first seen so. A listing of tens of
    thousands of entries costs the server real CPU, on the CPUs the commits
    need: the pause between polls is three times the last poll's duration
    (at least 20 ms), so polling takes at most a quarter of the time."""
    if timeout is None:
        timeout = max(180.0, (len(expected) + len(dirs)) / 100)
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        # The directory itself may not be committed yet either.
        t = time.perf_counter()
        listing = api.tree(project, prefix, missing_ok=True)
        seen = time.perf_counter()
        polls += 1
        have = {e["path"]: e["size"] for e in listing["entries"] if e["kind"] == "file"}
        have_dirs = {e["path"] for e in listing["entries"] if e["kind"] == "dir"}
        missing = sum(1 for p, s in expected.items() if have.get(p) != s)
        missing += sum(1 for d in dirs if d not in have_dirs)
        if missing == 0:
            # The listing shows the state the server had when it answered.
            return seen, polls
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{missing} of {len(expected) + len(dirs)} entries under {prefix} not committed after {timeout:.0f} s"
            )
        time.sleep(max(0.02, 3 * (seen - t)))


# ----- trees ----------------------------------------------------------------


def tree_paths(n, per_dir):
    """The files of an n-file tree: d0000/f000000.txt ... (per_dir=0: flat)."""
    if per_dir <= 0:
        return [f"f{i:06d}.txt" for i in range(n)]
    return [f"d{i // per_dir:04d}/f{i:06d}.txt" for i in range(n)]


def tree_dirs(n, per_dir):
    if per_dir <= 0:
        return []
    return [f"d{d:04d}" for d in range((n + per_dir - 1) // per_dir)]


def small_content(i):
    # 40..400 bytes, distinct per file (distinct blobs, like real files).
    line = f"file {i}: the quick brown fox jumps over the lazy dog\n".encode()
    return line * (1 + i % 8)


DISTINCT = 256  # a multiple of 8, so tree_content(i) has the size of small_content(i)


def tree_content(i):
    return small_content(i % DISTINCT)


def four_k(i):
    head = f"# note {i}\n\n".encode()
    return (head + b"x" * 4096)[:4095] + b"\n"


def join(prefix, path):
    return f"{prefix}/{path}" if prefix else path


# ----- results --------------------------------------------------------------


def floor_requests(args):
    """The FUSE floor's request counts so far (see examples/fuse_floor/main.rs)."""
    if not getattr(args, "requests_of", None):
        return None
    return json.loads(os.getxattr(args.requests_of, "user.fuse_floor.requests"))


class Timed:
    """Times a block; with --requests-of, also counts the floor's requests in it."""

    def __init__(self, args):
        self.args = args

    def __enter__(self):
        self.before = floor_requests(self.args)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        after = floor_requests(self.args)
        self.requests = None
        if after is not None:
            self.requests = {k: after[k] - self.before.get(k, 0) for k in after if after[k] != self.before.get(k, 0)}
        return False

    def fields(self, ops):
        out = {"ops": ops, "seconds": self.seconds, "per_s": ops / self.seconds}
        if self.requests is not None:
            out["requests"] = self.requests
        return out


def emit(args, **fields):
    rec = {"test": args.test, "target": args.target, **fields}
    line = json.dumps(rec)
    print(line, file=sys.stderr)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


# ----- subcommands ----------------------------------------------------------


def cmd_seed(args):
    api = Api(args.url, args.token)
    paths = tree_paths(args.files, args.per_dir)
    dirs = [args.prefix] if args.prefix else []
    dirs += [join(args.prefix, d) for d in tree_dirs(args.files, args.per_dir)]
    started = time.perf_counter()
    hashes = {}

    def upload(i):
        # The first DISTINCT files upload their content; the rest reuse one of
        # those blobs with a plain commit (the server dedupes by hash anyway).
        path = join(args.prefix, paths[i])
        if i < DISTINCT:
            hashes[i] = json.loads(api.put_file(args.project, path, tree_content(i)))["hash"]
        else:
            body = json.dumps({"path": path, "hash": hashes[i % DISTINCT]}).encode()
            api.request("POST", f"/api/v1/projects/{args.project}/commit", body, {"Content-Type": "application/json"})

    # Parents first, so concurrent commits never race to create the same one.
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        if args.prefix:
            api.mkdir(args.project, args.prefix)
        list(pool.map(lambda d: api.mkdir(args.project, d), dirs[1 if args.prefix else 0 :]))
        list(pool.map(upload, range(min(DISTINCT, len(paths)))))
        done = 0
        futures = [pool.submit(upload, i) for i in range(DISTINCT, len(paths))]
        for f in concurrent.futures.as_completed(futures):
            f.result()
            done += 1
            if done % 25000 == 0:
                print(f"  seeded {done}/{len(paths)}", file=sys.stderr)
    elapsed = time.perf_counter() - started
    print(
        f"  seeded {len(paths)} files + {len(dirs)} dirs under '{args.prefix or '/'}' in {elapsed:.1f} s "
        f"({len(paths) / elapsed:.0f} files/s)",
        file=sys.stderr,
    )
    if args.out:
        emit(args, files=len(paths), dirs=len(dirs), seconds=elapsed, per_s=len(paths) / elapsed)


def cmd_mktree(args):
    for d in tree_dirs(args.files, args.per_dir):
        os.makedirs(os.path.join(args.dir, d), exist_ok=True)
    os.makedirs(args.dir, exist_ok=True)
    for i, p in enumerate(tree_paths(args.files, args.per_dir)):
        with open(os.path.join(args.dir, p), "wb") as f:
            f.write(tree_content(i))


def read_once(path, buf):
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    total = 0
    try:
        while True:
            n = os.readv(fd, [buf])
            if n == 0:
                break
            total += n
    finally:
        os.close(fd)
    return total, time.perf_counter() - t0


def cmd_read(args):
    buf = bytearray(1 << 20)
    runs = [read_once(args.file, buf) for _ in range(args.reps)]
    total = runs[0][0]
    secs = statistics.median(t for _, t in runs)
    emit(args, bytes=total, seconds=secs, mb_s=total / secs / MB, reps=args.reps)


def cmd_stat(args):
    paths = [os.path.join(args.dir, p) for p in tree_paths(args.files, args.per_dir)]
    t0 = time.perf_counter()
    size = 0
    for p in paths:
        size += os.stat(p).st_size
    secs = time.perf_counter() - t0
    expected = sum(len(tree_content(i)) for i in range(args.files))
    if size != expected:
        sys.exit(f"stat: sizes add up to {size}, expected {expected}")
    emit(args, files=len(paths), seconds=secs, us_per_stat=secs / len(paths) * 1e6)


def cmd_readdir(args):
    times = []
    count = 0
    for _ in range(args.reps):
        t0 = time.perf_counter()
        count = len(os.listdir(args.dir))
        times.append(time.perf_counter() - t0)
    if args.expect and count != args.expect:
        sys.exit(f"readdir: {count} entries in {args.dir}, expected {args.expect}")
    rest = times[1:] or times
    emit(args, entries=count, first_s=times[0], median_s=statistics.median(rest), seconds=statistics.median(rest))


def server_args(args):
    if not args.server:
        return None
    url, token, project, prefix = args.server
    return Api(url, token), project, prefix


def cmd_small(args):
    srv = server_args(args)
    before = floor_requests(args)
    t0 = time.perf_counter()
    os.mkdir(args.dir)
    for i in range(args.files):
        fd = os.open(os.path.join(args.dir, f"s{i:05d}.md"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, four_k(i))
            if args.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    closed = time.perf_counter() - t0
    fields = {"files": args.files, "close_s": closed, "seconds": closed, "close_per_s": args.files / closed}
    if before is not None:
        after = floor_requests(args)
        fields["requests"] = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    if srv:
        api, project, prefix = srv
        expected = {f"{prefix}/s{i:05d}.md": len(four_k(i)) for i in range(args.files)}
        seen, polls = wait_committed(api, project, prefix, expected)
        fields.update(committed_s=seen - t0, committed_per_s=args.files / (seen - t0), polls=polls)
    emit(args, **fields)


def cmd_untar(args):
    srv = server_args(args)
    with tarfile.open(args.crate, "r:*") as t:
        members = t.getmembers()
    files = {m.name: m.size for m in members if m.isfile()}
    os.makedirs(args.dir, exist_ok=True)
    before = floor_requests(args)
    t0 = time.perf_counter()
    subprocess.run(["tar", "--no-same-owner", "-xf", args.crate, "-C", args.dir], check=True)
    done = time.perf_counter() - t0
    after = floor_requests(args)
    got = sum(1 for p in files if os.path.isfile(os.path.join(args.dir, p)))
    if got != len(files):
        sys.exit(f"untar: {got} of {len(files)} files extracted")
    fields = {
        "entries": len(members),
        "files": len(files),
        "bytes": sum(files.values()),
        "close_s": done,
        "seconds": done,
        "per_s": len(files) / done,
    }
    if before is not None:
        fields["requests"] = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    if srv:
        api, project, prefix = srv
        expected = {f"{prefix}/{p}": s for p, s in files.items()}
        seen, polls = wait_committed(api, project, prefix, expected)
        fields.update(
            committed_s=seen - t0, committed_per_s=len(files) / (seen - t0), lag_s=seen - t0 - done, polls=polls
        )
    emit(args, **fields)


def cmd_parwrite(args):
    """`--writers` threads, each writing its own new file of `--mb` MiB in
    128 KiB writes and closing it: the aggregate rate until every close
    returned (writes to different files through one mount)."""
    os.makedirs(args.dir, exist_ok=True)
    chunk = bytes(range(256)) * 512  # 128 KiB
    per_file = args.mb * (1 << 20)
    errors = []
    written_at = []

    def writer(k):
        try:
            fd = os.open(os.path.join(args.dir, f"w{k}.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                done = 0
                while done < per_file:
                    done += os.write(fd, chunk)
                written_at.append(time.perf_counter())
            finally:
                os.close(fd)
        except OSError as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(args.writers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        sys.exit(f"parwrite: {errors[0]}")
    total = per_file * args.writers
    write_s = max(written_at) - t0
    emit(
        args,
        writers=args.writers,
        bytes=total,
        seconds=seconds,
        mb_s=total / seconds / 1e6,
        write_s=write_s,
        write_mb_s=total / write_s / 1e6,
    )


def cmd_mknm(args):
    """A node_modules-like tree as a plain tar: `--dirs` directories 4-8
    levels deep below `node_modules/` (packages of a few nested folders),
    `--files` files of 10-2,000 bytes (log-uniform: most are small),
    deterministic for the same arguments."""
    import io
    import random

    rnd = random.Random(args.seed)
    words = "require module exports function return const let var this that value index lib dist src".split()
    dirs = ["node_modules"]  # paths relative to the tar root, parents first
    for p in range(max(1, args.dirs // 10)):
        # Every package starts with a chain 4 levels deep (node_modules/pkg/a/b).
        pkg = f"node_modules/pkg-{p:04d}-{rnd.choice(words)}"
        sub = f"{pkg}/{rnd.choice(['lib', 'dist', 'src'])}"
        dirs += [pkg, sub, f"{sub}/{rnd.choice(words)}{p % 7}"]
    deep = [d for d in dirs if d.count("/") >= 2]
    while len(dirs) < args.dirs:
        parent = rnd.choice(deep)
        if parent.count("/") >= 7:
            continue
        d = f"{parent}/{rnd.choice(words)}{len(dirs)}"
        dirs.append(d)
        deep.append(d)
    leaf_dirs = [d for d in dirs if d.count("/") >= 3]  # files live 4-8 levels deep
    mtime = 1_700_000_000
    buf = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            tar.addfile(info)
        # Files after all directories, grouped by directory like a real tarball.
        placed = sorted((rnd.randrange(len(leaf_dirs)), i) for i in range(args.files))
        for k, i in placed:
            size = int(10 * 200 ** rnd.random())  # 10..2,000 bytes
            line = f"/* {i} */ module.exports = {rnd.choice(words)}({i});\n".encode()
            data = (line * (size // len(line) + 1))[:size]
            info = tarfile.TarInfo(f"{leaf_dirs[k]}/f{i:05d}.{rnd.choice(['js', 'json', 'md', 'ts'])}")
            info.size, info.mode, info.mtime = size, 0o644, mtime
            tar.addfile(info, io.BytesIO(data))
            total += size
    with open(args.tar, "wb") as f:
        f.write(buf.getvalue())
    depths = [d.count("/") + 1 for d in dirs]
    print(
        f"  {args.tar}: {args.files} files ({total / MB:.1f} MB) in {len(dirs)} directories, "
        f"depth {min(depths)}-{max(depths)}",
        file=sys.stderr,
    )


def three_levels(n):
    """n directory paths on 3 levels, parents first: 10 top, 90 below them,
    the rest below those."""
    if n < 200:
        sys.exit("mkdirs: --dirs must be at least 200")
    top = [f"a{i}" for i in range(10)]
    mid = [f"{top[i % 10]}/b{i}" for i in range(90)]
    leaves = [f"{mid[i % 90]}/c{i}" for i in range(n - 100)]
    by_parent = {}
    for leaf in leaves:
        by_parent.setdefault(leaf.rsplit("/", 1)[0], []).append(leaf)
    out = []
    for t in top:
        out.append(t)
        for m in (m for m in mid if m.startswith(t + "/")):
            out.append(m)
            out += by_parent.get(m, [])
    return out


def cmd_mkdirs(args):
    srv = server_args(args)
    paths = three_levels(args.dirs)
    os.makedirs(args.dir, exist_ok=True)
    with Timed(args) as t:
        for p in paths:
            os.mkdir(os.path.join(args.dir, p))
    fields = t.fields(len(paths))
    if srv:
        api, project, prefix = srv
        seen, polls = wait_committed(api, project, prefix, {}, dirs={f"{prefix}/{p}" for p in paths})
        fields.update(committed_s=seen - t.t0, polls=polls)
    emit(args, **fields)


def cmd_rmdirs(args):
    paths = three_levels(args.dirs)
    with Timed(args) as t:
        for p in reversed(paths):
            os.rmdir(os.path.join(args.dir, p))
    emit(args, **t.fields(len(paths)))


def cmd_renames(args):
    srv = server_args(args)
    os.makedirs(args.dir, exist_ok=True)
    for i in range(args.files):
        with open(os.path.join(args.dir, f"f{i:05d}.txt"), "wb") as f:
            f.write((small_content(i) * 3)[:100])
    if srv:
        api, project, prefix = srv
        wait_committed(api, project, prefix, {f"{prefix}/f{i:05d}.txt": 100 for i in range(args.files)})
    time.sleep(args.settle)
    with Timed(args) as t:
        for i in range(args.files):
            os.rename(os.path.join(args.dir, f"f{i:05d}.txt"), os.path.join(args.dir, f"r{i:05d}.txt"))
    fields = t.fields(args.files)
    if srv:
        seen, polls = wait_committed(api, project, prefix, {f"{prefix}/r{i:05d}.txt": 100 for i in range(args.files)})
        fields.update(committed_s=seen - t.t0, polls=polls)
    emit(args, **fields)


def cmd_unlinks(args):
    with Timed(args) as t:
        for i in range(args.files):
            os.unlink(os.path.join(args.dir, f"r{i:05d}.txt"))
    emit(args, **t.fields(args.files))


def cmd_seqwrite(args):
    chunk = os.urandom(1 << 20)
    total = args.mb * (1 << 20)
    with Timed(args) as t:
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            done = 0
            while done < total:
                done += os.write(fd, chunk)
            written = time.perf_counter()
            os.fsync(fd)
            synced = time.perf_counter()
        finally:
            os.close(fd)
    emit(
        args,
        bytes=total,
        seconds=t.seconds,
        mb_s=total / t.seconds / MB,
        write_s=written - t.t0,
        fsync_s=synced - written,
        close_s=t.t0 + t.seconds - synced,
        **({"requests": t.requests} if t.requests is not None else {}),
    )


def cmd_stracec(args):
    """Reads the summary table `strace -c -o FILE` writes when it detaches."""
    calls = {}
    for line in open(args.file):
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            try:
                calls[parts[-1]] = int(parts[3])
            except ValueError:
                continue
    emit(args, ops=args.ops, calls=calls, total=sum(calls.values()))


def read_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024 / MB
    return out


def cmd_rss(args):
    s = read_status(args.pid)
    emit(args, rss_mb=s["VmRSS"], hwm_mb=s["VmHWM"])


# ----- report ---------------------------------------------------------------


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if unit == "s":
        return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"
    if abs(v) >= 100:
        return f"{v:,.0f}{unit}"
    if abs(v) >= 10:
        return f"{v:.1f}{unit}"
    return f"{v:.2f}{unit}"


def cmd_report(args):
    recs = [json.loads(l) for l in open(args.results) if l.strip()]
    meta = json.load(open(args.meta))
    by = {}
    runs = {}  # (test, target) -> every record, for tests that ran more than once
    for r in recs:
        by[(r["test"], r["target"])] = r
        runs.setdefault((r["test"], r["target"]), []).append(r)

    def get(test, target, key):
        """The value of one record, or the median over the repeated runs."""
        vals = [r[key] for r in runs.get((test, target), []) if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    targets = ["native", "contextfs", "contextfs_pt", "rclone", "fuse_floor"]
    rows = []  # (label, unit kind, {target: value}, better)

    def row(label, test, key, kind, targets_=targets):
        vals = {t: get(test, t, key) for t in targets_}
        rows.append((label, kind, vals))

    big = meta["big_mb"]
    row(f"seq read {big} MiB, cold (MB/s)", "read_cold", "mb_s", "rate")
    row(f"seq read {big} MiB, cache-warm, page-cache-cold (MB/s)", "read_cachewarm", "mb_s", "rate")
    row(f"seq read {big} MiB, warm: 2nd read (MB/s)", "read_warm", "mb_s", "rate")
    row(f"seq read {big} MiB, warm: median of 3 more reads (MB/s)", "read_warm3", "mb_s", "rate")
    n = meta["files"]
    stat_reps = meta.get("stat_reps", 1)
    of = f", median of {stat_reps}" if stat_reps > 1 else ""
    row(f"stat {n:,} files, cold{of}", "stat_cold", "seconds", "time")
    row(f"stat {n:,} files, warm{of}", "stat_warm", "seconds", "time")
    row(f"readdir {n:,} entries, first", "readdir", "first_s", "time")
    row(f"readdir {n:,} entries, median of next {meta['readdir_reps'] - 1}", "readdir", "median_s", "time")
    s = meta["small"]
    pw = meta.get("par_writers")
    if pw:
        row(f"{pw} writers × {meta['par_mb']} MiB, each its own new file: writes (MB/s)", "parwrite", "write_mb_s", "rate")
        row(f"{pw} writers × {meta['par_mb']} MiB, each its own new file: until every close (MB/s)", "parwrite", "mb_s", "rate")

    def ratio(kind, v, nat):
        if v is None or nat is None or nat == 0:
            return ""
        if kind == "rate":
            return f" ({v / nat * 100:.0f} %)"
        return f" ({v / nat:.1f}×)"

    lines = [
        "| measurement | native | contextfs | contextfs `--passthrough read-only` | rclone | FUSE floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, kind, vals in rows:
        nat = vals.get("native")
        cells = []
        for t in targets:
            v = vals.get(t)
            if kind == "rate":
                cell = fmt(v)
            else:
                cell = fmt(v, "s")
            if t != "native":
                cell += ratio(kind, v, nat)
            if v is None:
                cell = "—"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    # ----- the write path (issue 11) -----
    wtargets = ["native", "fuse_floor", "contextfs", "contextfs_strict", "rclone"]
    wnames = {
        "native": "native",
        "fuse_floor": "FUSE floor",
        "contextfs": "contextfs",
        "contextfs_strict": "contextfs `--durability strict`",
        "rclone": "rclone",
    }
    nm_label = f"untar node_modules-like tree ({meta.get('nm_files', 0):,} files, {meta.get('nm_dirs', 0):,} dirs)"
    # (label, test, ops key, time key); time rows are shown as operations per second.
    wrows = [
        (f"create + write 4 KiB + close, {s:,} files", "small", "files", "close_s"),
        (f"untar {meta['crate_name']} ({meta['crate_files']} files)", "untar", "files", "close_s"),
        (nm_label, "untar_nm", "files", "close_s"),
        (f"mkdir, {meta.get('dirs', 0):,} dirs on 3 levels", "mkdirs", "ops", "seconds"),
        ("rmdir of the same", "rmdirs", "ops", "seconds"),
        (f"rename {meta.get('renames', 0):,} files in place", "renames", "ops", "seconds"),
        (f"unlink {meta.get('renames', 0):,} files", "unlinks", "ops", "seconds"),
    ]
    seq_mb = meta.get("seq_mb", big)

    def rate(test, t, okey, tkey):
        n, secs = get(test, t, okey), get(test, t, tkey)
        return n / secs if n and secs else None

    wl = [
        "| operation (one process) | " + " | ".join(wnames[t] for t in wtargets) + " |",
        "| --- |" + " ---: |" * len(wtargets),
    ]
    for label, test, okey, tkey in wrows:
        cells = []
        for t in wtargets:
            v, secs = rate(test, t, okey, tkey), get(test, t, tkey)
            cells.append("—" if v is None else f"{fmt(v)}/s ({fmt(secs, 's')})")
        wl.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for t in wtargets:
        v = get("seqwrite", t, "mb_s")
        cells.append("—" if v is None else f"{fmt(v)} MB/s")
    wl.append(f"| sequential write {seq_mb} MiB + fsync | " + " | ".join(cells) + " |")

    # Ratios: rate / native rate, and time / floor time.
    rl = [
        "| operation | floor / native | contextfs / native | contextfs time ÷ floor time | strict / native "
        "| strict time ÷ floor time | rclone / native | rclone time ÷ floor time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def share(a, b):
        return f"{a / b:.2f}" if a and b else "—"

    def times(a, b):
        return f"{b / a:.2f}×" if a and b else "—"  # rates in, time ratio out

    for label, test, okey, tkey in wrows:
        r = {t: rate(test, t, okey, tkey) for t in wtargets}
        rl.append(
            f"| {label} | {share(r['fuse_floor'], r['native'])} | {share(r['contextfs'], r['native'])} "
            f"| {times(r['contextfs'], r['fuse_floor'])} | {share(r['contextfs_strict'], r['native'])} "
            f"| {times(r['contextfs_strict'], r['fuse_floor'])} | {share(r['rclone'], r['native'])} "
            f"| {times(r['rclone'], r['fuse_floor'])} |"
        )
    r = {t: get("seqwrite", t, "mb_s") for t in wtargets}
    rl.append(
        f"| sequential write {seq_mb} MiB + fsync | {share(r['fuse_floor'], r['native'])} "
        f"| {share(r['contextfs'], r['native'])} | {times(r['contextfs'], r['fuse_floor'])} "
        f"| {share(r['contextfs_strict'], r['native'])} | {times(r['contextfs_strict'], r['fuse_floor'])} "
        f"| {share(r['rclone'], r['native'])} | {times(r['rclone'], r['fuse_floor'])} |"
    )

    # Committed on the server.
    cl = [
        "| on the server (contextfs) | default `local` | `--durability strict` |",
        "| --- | ---: | ---: |",
    ]

    def committed(test, key, unit):
        out = []
        for t in ("contextfs", "contextfs_strict"):
            v = get(test, t, key)
            out.append("—" if v is None else (fmt(v, "s") if unit == "s" else f"{fmt(v)}{unit}"))
        return " | ".join(out)

    cl.append(f"| {s:,} small files: all committed, from the first create | {committed('small', 'committed_s', 's')} |")
    cl.append(f"| {s:,} small files: committed files/s | {committed('small', 'committed_per_s', '/s')} |")
    cl.append(f"| untar {meta['crate_name']}: all committed, from tar's start | {committed('untar', 'committed_s', 's')} |")
    cl.append(f"| untar {meta['crate_name']}: committed after tar exited | {committed('untar', 'lag_s', 's')} |")
    cl.append(f"| {nm_label}: all committed, from tar's start | {committed('untar_nm', 'committed_s', 's')} |")
    cl.append(f"| {nm_label}: committed after tar exited | {committed('untar_nm', 'lag_s', 's')} |")
    cl.append(f"| {nm_label}: committed files/s | {committed('untar_nm', 'committed_per_s', '/s')} |")
    cl.append(f"| mkdir of {meta.get('dirs', 0):,} dirs: all on the server | {committed('mkdirs', 'committed_s', 's')} |")
    cl.append(f"| rename of {meta.get('renames', 0):,} files: all on the server | {committed('renames', 'committed_s', 's')} |")

    # FUSE requests per operation, counted by the floor (the kernel sends
    # contextfs the same ones: same settings, same implemented requests).
    ql = [
        "| operation | requests the caller waits for, per operation | FUSE requests per operation, counted by the floor "
        "(`forget` and `release` are sent without waiting) |",
        "| --- | ---: | --- |",
    ]
    for label, test, okey, _ in wrows + [(f"sequential write {seq_mb} MiB + fsync", "seqwrite", None, None)]:
        rec = by.get((test, "fuse_floor"))
        if not rec or "requests" not in rec:
            continue
        ops = rec["files"] if test == "small" else (rec.get(okey) if okey else 1)
        # Below 0.01 per operation: the test's own setup (its directory).
        per = sorted(((k, v / ops) for k, v in rec["requests"].items() if v / ops >= 0.01), key=lambda kv: -kv[1])
        sync = sum(v for k, v in per if k not in ("forget", "release"))
        unit = "" if okey else " (whole file)"
        ql.append(f"| {label}{unit} | {sync:.2f} | " + ", ".join(f"{k} {v:.2f}" for k, v in per) + " |")

    # strace -c of the mount process.
    sl = [
        "| mount | 500 × | syscalls / op | fdatasync / op | fsync / op | statx / op | the five most frequent (per op) |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in ("contextfs", "contextfs_strict"):
        for what, shown in (
            ("create", "create"),
            ("mkdir", "mkdir"),
            ("create_paused", "create, server stopped"),
            ("mkdir_paused", "mkdir, server stopped"),
        ):
            rec = by.get((f"strace_{what}", t))
            if not rec:
                continue
            ops, c = rec["ops"], rec["calls"]
            top = sorted(c.items(), key=lambda kv: -kv[1])[:5]
            sl.append(
                f"| {wnames[t]} | {shown} | {rec['total'] / ops:.1f} | {c.get('fdatasync', 0) / ops:.2f} "
                f"| {c.get('fsync', 0) / ops:.2f} | {c.get('statx', 0) / ops:.2f} | "
                + ", ".join(f"{k} {v / ops:.1f}" for k, v in top)
                + " |"
            )

    wgoals = []

    def wgoal(text, ok, detail):
        wgoals.append(f"- {text}: " + ("not measured" if ok is None else f"**{'met' if ok else 'NOT met'}** ({detail})"))

    for label, test, okey, tkey in wrows:
        rn, rf = rate(test, "native", okey, tkey), rate(test, "fuse_floor", okey, tkey)
        rc, rs = rate(test, "contextfs", okey, tkey), rate(test, "contextfs_strict", okey, tkey)
        strict = f"; strict {rs / rn:.2f}" if rs and rn else ""
        wgoal(f"{label}: ≥ 0.1 of native", None if not (rc and rn) else rc >= 0.1 * rn,
              f"{rc / rn:.3f}{strict}" if rc and rn else "")
        strict = f"; strict {rf / rs:.2f}×" if rs and rf else ""
        wgoal(f"{label}: within 1.5× of the floor's time", None if not (rc and rf) else rf / rc <= 1.5,
              f"{rf / rc:.2f}×{strict}" if rc and rf else "")
    sn, sc = get("seqwrite", "native", "mb_s"), get("seqwrite", "contextfs", "mb_s")
    wgoal("sequential write ≥ 0.7 of native", None if not (sn and sc) else sc >= 0.7 * sn,
          f"{sc / sn:.2f}" if sn and sc else "")
    cps = get("small", "contextfs", "committed_per_s")
    wgoal("≥ 5,000 small files/s committed on the server", None if cps is None else cps >= 5000,
          f"{cps:,.0f} files/s" if cps else "")
    lag = get("untar_nm", "contextfs", "lag_s")
    wgoal(f"the {meta.get('nm_files', 0):,}-file tree committed within 10 s of tar exiting",
          None if lag is None else lag <= 10, fmt(lag, "s"))

    # The big mount.
    bm = by.get(("bigmount", "contextfs"), {})
    nodes = meta["nodes"]
    extra = [
        "",
        f"| {nodes:,}-node project (contextfs) | result |",
        "| --- | ---: |",
        f"| `contextfs mount --daemon` until ready | {fmt(bm.get('mount_s'), 's')} |",
        f"| of which `GET /tree` on the server (curl, {fmt(bm.get('tree_mb'))} MB JSON) | {fmt(bm.get('tree_s'), 's')} |",
        f"| RSS after mount (VmRSS) | {fmt(bm.get('rss_mount_mb'))} MB |",
        f"| `find` of the whole tree ({bm.get('find_entries', 'n/a')} entries) | {fmt(bm.get('find_s'), 's')} |",
        f"| RSS after `find` (VmRSS) | {fmt(bm.get('rss_find_mb'))} MB |",
        f"| peak RSS (VmHWM) | {fmt(bm.get('hwm_find_mb'))} MB |",
    ]
    lines += extra

    # Extra context rows.
    nf = get("small", "native_fsync", "close_s")
    seed = by.get(("seed_big", "server"), {})

    # Goals.
    goals = []

    def goal(text, ok, detail):
        if ok is None:
            goals.append(f"- {text}: not measured")
        else:
            goals.append(f"- {text}: **{'met' if ok else 'NOT met'}** ({detail})")

    wn = get("read_warm", "native", "mb_s")
    for target, mode in (("contextfs", "default `--passthrough all`"), ("contextfs_pt", "`--passthrough read-only`")):
        wc = get("read_warm", target, "mb_s")
        goal(
            f"warm sequential read ≥ 90 % of native, {mode}",
            None if not (wn and wc) else wc >= 0.9 * wn,
            f"{wc / wn * 100:.0f} %" if wn and wc else "",
        )
    for phase in ("cold", "warm"):
        sn, sc = get(f"stat_{phase}", "native", "seconds"), get(f"stat_{phase}", "contextfs", "seconds")
        sf = get(f"stat_{phase}", "fuse_floor", "seconds")
        floor = f"; the FUSE floor: {sf / sn:.1f}× native, contextfs {sc / sf:.2f}× the floor" if sn and sc and sf else ""
        goal(
            f"{n:,} stats ({phase}) within 3× native",
            None if not (sn and sc) else sc <= 3 * sn,
            f"{sc / sn:.1f}×{floor}" if sn and sc else "",
        )
    cps = get("small", "contextfs", "committed_per_s")
    goal("≥ 1,000 committed small files per second", None if cps is None else cps >= 1000, f"{cps:,.0f} files/s" if cps else "")
    ms = bm.get("mount_s")
    goal(f"{nodes:,}-node mount in < 3 s", None if ms is None else ms < 3, fmt(ms, "s"))
    peak = bm.get("hwm_find_mb")
    goal(
        f"{nodes:,}-node mount < 150 MB resident",
        None if peak is None else max(peak, bm.get("rss_mount_mb") or 0) < 150,
        f"{fmt(bm.get('rss_mount_mb'))} MB after mount, {fmt(bm.get('rss_find_mb'))} MB after find, peak {fmt(peak)} MB",
    )

    notes = []
    if nf is not None:
        notes.append(
            f"- native with an fsync before each close (the durability a close has with `--durability strict`): "
            f"{s:,} files in {fmt(nf, 's')}."
        )
    utc = get("untar", "contextfs", "committed_per_s")
    if utc:
        notes.append(f"- untar on contextfs: {utc:,.0f} committed files/s until the last file was on the server.")
    if seed:
        notes.append(
            f"- seeding the {nodes:,}-node project through the REST API (256 distinct contents: "
            f"`PUT .../files/{{path}}`, then `POST .../commit` naming one of their blobs; "
            f"{meta['seed_concurrency']} requests at once): {seed.get('per_s', 0):,.0f} files/s."
        )

    section = []
    section.append("## Mount")
    section.append("")
    section.append(f"- date: {meta['date']}")
    section.append(f"- machine: {meta['cpu']}, {meta['nproc']} CPUs (nproc), {meta['mem_gb']} GB RAM, kernel {meta['kernel']}")
    section.append(f"- code: {meta['code']}; server on SQLite + blob folder, {meta['fs']} under `{meta['tmp']}`, loopback HTTP")
    section.append(
        f"- 1-minute load average when the measurements started / ended: {meta['load_start']} / {meta['load_end']} "
        f"(includes this benchmark's own processes; {meta['others']})"
    )
    section.append(
        f"- targets: **native** = a directory on that file system; **contextfs** = `contextfs mount` of a project on "
        f"`contextfs serve` on 127.0.0.1 (fresh server, empty cache dir); **contextfs** reads clean files by FUSE passthrough "
        f"(the default `--passthrough all`); **contextfs `--passthrough read-only`** = a second mount of the same "
        f"project with its own empty cache, where writable files are read through the mount process and the "
        f"kernel's page cache (read tests only); **rclone** = `rclone mount` of a local "
        f"directory, `--vfs-cache-mode {meta['rclone_mode']}` ({meta['rclone_version']}); **FUSE floor** = "
        f"`examples/fuse_floor`, an in-memory FUSE file system with contextfs's FUSE settings (fuser, "
        f"the same worker threads and TTLs), here mirroring the native directory's names and sizes: what a stat or "
        f"a listing costs through the kernel's FUSE round trip alone (for the write tests, see below)"
    )
    section.append(
        "- cold = after `sync; echo 3 > /proc/sys/vm/drop_caches` (for contextfs: the first read after mounting with "
        "an empty cache, fetched from the server); cache-warm, page-cache-cold = caches dropped again after that first "
        "read; warm = the next read (the goal is judged on it), then the median of three more. MB = 10^6 bytes. "
        "Ratios: (%) = share of native throughput, (×) = time relative to native (for \"committed on server\": "
        "relative to native's write time)."
    )
    section.append(
        f"- trees: {n:,} files of 40–400 B in directories of 100 (stat), {n:,} files in one directory (readdir), "
        "created through the REST API for contextfs and then mounted; writes go through each mount. "
        "rclone's local backend has no server: its numbers are until the writes return."
    )
    section.append("")
    section += lines
    section.append("")
    section.append("Goals:")
    section.append("")
    section += goals
    section.append("")
    section.append("### Write path (issue 11)")
    section.append("")
    section.append(
        f"Each test on a fresh directory of each target, one after the other in the order of the columns (the "
        f"contextfs `--durability strict` mount is a second mount of the same project, mounted after the default "
        f"one was unmounted, with its own empty cache). Cells: operations per second (wall time of the whole "
        f"test; for create, mkdir, rmdir, rename and unlink the median of {meta.get('write_reps', 1)} runs, each "
        f"in a new directory). The FUSE floor here is `examples/fuse_floor` started empty: an in-memory writable FUSE file "
        f"system with contextfs's FUSE settings (no writeback cache, 1 s entry and attribute TTLs, 8 threads). "
        f"1-minute load average when the write tests started: {meta.get('load_write', '?')} "
        f"({meta.get('others_write', '')})."
    )
    section.append("")
    section += wl
    section.append("")
    section.append("Ratios (operations per second relative to native; time relative to the FUSE floor's time):")
    section.append("")
    section += rl
    section.append("")
    section += cl
    section.append("")
    section += ql
    section.append("")
    section.append(
        "`strace -c -f -p <mount pid>` during 500 creates (+ 4 KiB + close) and during 500 mkdirs, one "
        "process, started after everything before was committed; the window ends when the last operation "
        "returns, so it includes what the sync worker did meanwhile. Then the same with the server stopped "
        "(SIGSTOP) for the window: what the FUSE path alone costs (the sync worker waits on its socket). "
        "strace slows the mount; the counts matter, not the time:"
    )
    section.append("")
    section += sl
    section.append("")
    section.append("Goals (issue 11; contextfs with the default `--durability local`):")
    section.append("")
    section += wgoals
    if notes:
        section.append("")
        section.append("Notes:")
        section.append("")
        section += notes
    section.append("")
    section.append("Raw records:")
    section.append("")
    section.append("```text")
    section += [json.dumps(r, separators=(",", ":")) for r in recs]
    section.append("```")
    text = "\n".join(section)
    print(text)
    print(
        "\n".join(["", *lines, "", *goals, *notes, "", *wl, "", *rl, "", *cl, "", *ql, "", *sl, "", *wgoals]),
        file=sys.stderr,
    )


# ----- main -----------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="append the result record to this JSON-lines file")
    p.add_argument("--test", default="")
    p.add_argument("--target", default="")
    p.add_argument("--requests-of", help="root of an examples/fuse_floor mount: record its request counts")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("seed")
    s.add_argument("url")
    s.add_argument("token")
    s.add_argument("project")
    s.add_argument("--prefix", default="")
    s.add_argument("--files", type=int, required=True)
    s.add_argument("--per-dir", type=int, default=100)
    s.add_argument("--concurrency", type=int, default=16)
    s.set_defaults(fn=cmd_seed)

    s = sub.add_parser("mktree")
    s.add_argument("dir")
    s.add_argument("--files", type=int, required=True)
    s.add_argument("--per-dir", type=int, default=100)
    s.set_defaults(fn=cmd_mktree)

    s = sub.add_parser("read")
    s.add_argument("file")
    s.add_argument("--reps", type=int, default=1, help="read it this many times; report the median")
    s.set_defaults(fn=cmd_read)

    s = sub.add_parser("stat")
    s.add_argument("dir")
    s.add_argument("--files", type=int, required=True)
    s.add_argument("--per-dir", type=int, default=100)
    s.set_defaults(fn=cmd_stat)

    s = sub.add_parser("readdir")
    s.add_argument("dir")
    s.add_argument("--reps", type=int, default=5)
    s.add_argument("--expect", type=int, default=0)
    s.set_defaults(fn=cmd_readdir)

    for name, fn in (("small", cmd_small), ("untar", cmd_untar)):
        s = sub.add_parser(name)
        if name == "untar":
            s.add_argument("crate")
        s.add_argument("dir")
        if name == "small":
            s.add_argument("--files", type=int, required=True)
            s.add_argument("--fsync", action="store_true")
        s.add_argument("--server", nargs=4, metavar=("URL", "TOKEN", "PROJECT", "PREFIX"))
        s.set_defaults(fn=fn)

    s = sub.add_parser("parwrite")
    s.add_argument("dir")
    s.add_argument("--writers", type=int, default=4)
    s.add_argument("--mb", type=int, default=64)
    s.set_defaults(fn=cmd_parwrite)

    s = sub.add_parser("mknm")
    s.add_argument("tar")
    s.add_argument("--files", type=int, default=30000)
    s.add_argument("--dirs", type=int, default=3000)
    s.add_argument("--seed", type=int, default=11)
    s.set_defaults(fn=cmd_mknm)

    for name, fn in (("mkdirs", cmd_mkdirs), ("rmdirs", cmd_rmdirs)):
        s = sub.add_parser(name)
        s.add_argument("dir")
        s.add_argument("--dirs", type=int, default=1000)
        s.add_argument("--server", nargs=4, metavar=("URL", "TOKEN", "PROJECT", "PREFIX"))
        s.set_defaults(fn=fn)

    for name, fn in (("renames", cmd_renames), ("unlinks", cmd_unlinks)):
        s = sub.add_parser(name)
        s.add_argument("dir")
        s.add_argument("--files", type=int, default=1000)
        s.add_argument("--settle", type=float, default=0, help="pause before the renames, in seconds")
        s.add_argument("--server", nargs=4, metavar=("URL", "TOKEN", "PROJECT", "PREFIX"))
        s.set_defaults(fn=fn)

    s = sub.add_parser("seqwrite")
    s.add_argument("file")
    s.add_argument("--mb", type=int, default=1024)
    s.set_defaults(fn=cmd_seqwrite)

    s = sub.add_parser("stracec")
    s.add_argument("file")
    s.add_argument("--ops", type=int, required=True)
    s.set_defaults(fn=cmd_stracec)

    s = sub.add_parser("rss")
    s.add_argument("pid", type=int)
    s.set_defaults(fn=cmd_rss)

    s = sub.add_parser("report")
    s.add_argument("results")
    s.add_argument("meta")
    s.set_defaults(fn=cmd_report)

    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
