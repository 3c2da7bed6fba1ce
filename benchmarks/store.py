"""Benchmark the s3:// store's parallel transfers against single-stream minio transfers, on two S3 servers in one run.

    python benchmarks/store.py [--size-gb 1.0] [--shards 4] [--part-size 64Mi] [--concurrency 8]
                               [--servers moto s3rver]

For each server it starts it in a child process on loopback (its own interpreter or Node process,
so that server and client do not share a GIL), writes a synthetic checkpoint of about --size-gb in
--shards shards plus the small files of a HF folder, then measures, on the same bytes and the same
server:

- upload    kwarp: `S3Store.put_checkpoint` (parallel multipart parts, several files at once,
                   sha256 while streaming, manifest last)
            single: minio `fput_object` of each file in turn, one part at a time (num_parallel_uploads=1)
- download  kwarp: `S3Store.download_checkpoint` (parallel ranged GETs streamed into their place in
                   the files, sha256 in file order, fsync, manifest)
            single: minio `fget_object` of each file in turn, then a sync (no hashing)

and, as a control, kwarp's own path with --concurrency 1 (the same hashing, fsync and manifest, no
parallelism), so that the ratio separates what parallel streams buy from what verification costs.
It prints throughput (MB/s), the kwarp/single ratios, and peak RSS of the client and the servers.
Speed is printed, never asserted.

The two servers differ where it matters: moto is an in-memory Python server (it spills objects above
5 MiB to temporary files) that reads the whole object for every ranged GET, so each range costs it
O(object size) and its CPU, not the network, bounds a loopback transfer; s3rver (npm, Node; installed
by `make peers` from tests/peers/s3rver/package-lock.json) is file-backed and streams a range straight
from its file. The figures compare client strategies against one server, not kwarp against MinIO.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from minio import Minio
from rich.console import Console
from rich.table import Table

from kwarp.core.checkpoints import MANIFEST
from kwarp.store.s3 import Credentials, RetryPolicy, S3Config, S3Store, parse_size

MB = 1e6
S3RVER = Path(__file__).resolve().parent.parent / "tests" / "peers" / "s3rver" / "node_modules" / ".bin" / "s3rver"


@dataclass(frozen=True)
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    endpoint: str
    access: str
    secret: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(proc: subprocess.Popen[bytes], port: int, what: str, probe: str | None = None) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode} before it listened")
        try:
            if probe:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{probe}", timeout=1).read()
            else:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{what} did not start within 30s")


def start_moto(port: int, tmpdir: Path) -> Server:
    env = {**os.environ, "TMPDIR": str(tmpdir)}  # where moto spills object bytes
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    _wait_listening(proc, port, "moto server", "/moto-api/data.json")
    return Server("moto", proc, f"127.0.0.1:{port}", "bench-access", "bench-secret")


def start_s3rver(port: int, tmpdir: Path) -> Server:
    data = tmpdir / "s3rver-data"
    data.mkdir()
    proc = subprocess.Popen(
        [str(S3RVER), "-d", str(data), "-a", "127.0.0.1", "-p", str(port), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_listening(proc, port, "s3rver")
    return Server("s3rver", proc, f"127.0.0.1:{port}", "S3RVER", "S3RVER")  # s3rver's own credentials


SERVERS = {"moto": start_moto, "s3rver": start_s3rver}


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a live process (its peak resident set), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MB
    return float("nan")


def write_checkpoint(folder: Path, size_bytes: int, shards: int) -> int:
    folder.mkdir(parents=True)
    per = size_bytes // shards
    for k in range(shards):
        with open(folder / f"model-{k + 1:05d}-of-{shards:05d}.safetensors", "wb") as f:
            left = per
            while left:  # random bytes: nothing on the way can compress or deduplicate them
                chunk = os.urandom(min(left, 16 << 20))
                f.write(chunk)
                left -= len(chunk)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    (folder / "tokenizer.json").write_bytes(os.urandom(2 << 20))
    return sum(p.stat().st_size for p in folder.iterdir())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Timing:
    wall: float
    client_cpu: float
    server_cpu: float


def timed(fn: Callable[[], object], server_pid: int) -> Timing:
    cpu0, server0, wall0 = time.process_time(), cpu_seconds(server_pid), time.perf_counter()
    fn()
    return Timing(time.perf_counter() - wall0, time.process_time() - cpu0, cpu_seconds(server_pid) - server0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="checkpoint size in GB (1e9 bytes)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--part-size", default="64Mi", help="multipart part size of uploads")
    parser.add_argument("--concurrency", type=int, default=8, help="parallel streams of the kwarp store")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--ops", nargs="+", default=["upload", "download"], choices=["upload", "download"],
                        help="what to measure (objects a download needs are uploaded untimed)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every download case; the fastest is kept")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    part_size = parse_size(args.part_size, "--part-size")

    console = Console(width=110)
    servers = list(args.servers)
    if "s3rver" in servers and not S3RVER.exists():
        console.print(f"s3rver is not installed ({S3RVER} missing; `make peers` installs it): measuring moto only")
        servers.remove("s3rver")
    console.print(f"cpus {os.cpu_count()}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for name in servers:
        bench(console, name, args, part_size)
    console.print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


def bench(console: Console, server_name: str, args: argparse.Namespace, part_size: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="kwarp-bench-store-", dir=args.workdir))
    server = SERVERS[server_name](free_port(), work)
    try:
        endpoint = server.endpoint
        client = Minio(endpoint, server.access, server.secret, secure=False, region="us-east-1")
        client.make_bucket("bench")
        src = work / "src"
        total = write_checkpoint(src, int(args.size_gb * 1e9), args.shards)
        files = sorted(p.name for p in src.iterdir())
        config = S3Config(
            endpoint=endpoint,
            secure=False,
            region="us-east-1",
            part_size=part_size,
            concurrency=args.concurrency,
            retry=RetryPolicy(max_attempts=3),
        )
        creds = Credentials(server.access, server.secret)
        store = S3Store("bench", "kwarp", config=config, credentials=creds)
        serial = S3Store("bench", "serial", config=replace(config, concurrency=1), credentials=creds)
        console.print(
            f"[bold]{server_name}[/]: checkpoint {total / MB:.0f} MB in {args.shards} shards + "
            f"{len(files) - args.shards} small files; part {part_size >> 20} MiB, concurrency {args.concurrency}; "
            f"server at {endpoint} (pid {server.proc.pid})"
        )

        def single_upload() -> None:
            for name in files:
                client.fput_object(
                    "bench", f"single/{name}", str(src / name), part_size=part_size, num_parallel_uploads=1
                )

        def single_download() -> None:
            for name in files:
                client.fget_object("bench", f"single/{name}", str(work / "single-down" / name))
            os.sync()  # durable on disk, as kwarp's download (it fsyncs every file) is

        runs: dict[tuple[str, str], Callable[[], object]] = {
            ("upload", "single"): single_upload,
            ("upload", "serial"): lambda: serial.put_checkpoint(src, "ckpt"),
            ("upload", "kwarp"): lambda: store.put_checkpoint(src, "ckpt"),
            ("download", "single"): single_download,
            ("download", "serial"): lambda: serial.download_checkpoint("ckpt", work / "serial-down"),
            ("download", "kwarp"): lambda: store.download_checkpoint("ckpt", work / "kwarp-down"),
        }
        results: dict[tuple[str, str], Timing] = {}
        # Uploads once (a second one would replace and collect a version: not what is measured here, and
        # s3rver's multi-object delete fails); downloads --repeat times, keeping each case's fastest (the
        # machine is shared).
        if "upload" not in args.ops:  # the objects the downloads read, put there untimed
            for name in files:
                client.fput_object("bench", f"single/{name}", str(src / name), part_size=part_size,
                                   num_parallel_uploads=args.concurrency)
            serial.put_checkpoint(src, "ckpt")
            store.put_checkpoint(src, "ckpt")
        for rounds, op in ((1, "upload"), (args.repeat, "download")):
            if op not in args.ops:
                continue
            for _ in range(rounds):
                for what, fn in runs.items():
                    if what[0] != op:
                        continue
                    os.sync()  # no write-back of the previous phase lands in this one
                    t = timed(fn, server.proc.pid)
                    if what not in results or t.wall < results[what].wall:
                        results[what] = t

        for name in files:  # every download brought back every byte
            for folder in ("single-down", "serial-down", "kwarp-down"):
                assert (work / folder / name).stat().st_size == (src / name).stat().st_size
        assert (work / "kwarp-down" / MANIFEST).is_file()

        table = Table(title=f"s3 store throughput on {server_name}, {total / MB:.0f} MB checkpoint",
                      title_justify="left")
        table.add_column("operation")
        table.add_column("client")
        for col in ("MB/s", "seconds", "client CPU s", "server CPU s", "vs single"):
            table.add_column(col, justify="right")
        names = {
            "single": "minio, single stream",
            "serial": "kwarp, 1 stream",
            "kwarp": f"kwarp, {args.concurrency} streams",
        }
        for op in args.ops:
            for who in ("single", "serial", "kwarp"):
                t = results[op, who]
                ratio = f"{results[op, 'single'].wall / t.wall:.2f}x"
                table.add_row(
                    op, names[who], f"{total / MB / t.wall:.0f}", f"{t.wall:.1f}", f"{t.client_cpu:.1f}",
                    f"{t.server_cpu:.1f}", ratio,
                )  # fmt: skip
        console.print(table)
        client_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB
        console.print(
            f"peak RSS: client so far {client_rss:.0f} MB, {server_name} {peak_rss_mb(server.proc.pid):.0f} MB; "
            f"retries {store.stats.retries + serial.stats.retries}; load average {os.getloadavg()[0]:.1f}"
        )
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
