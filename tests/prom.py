"""Real Prometheus and Pushgateway servers for tests, on loopback ports they pick themselves.

The binaries come from Debian's packages (`apt-get install -y prometheus prometheus-pushgateway`, which also
brings promtool). A test that needs them fails with that command when they are missing: observability that
was never checked against a real Prometheus is not checked.

    gw = Pushgateway.start(tmp_path)                       # http://127.0.0.1:<port>
    prom = Prometheus.start(tmp_path, {"pushgateway": ScrapeJob([gw.address], honor_labels=True)})
    prom.query('kwarp_trainer_step{run="demo"}')           # the result list of /api/v1/query
    prom.stop(); gw.stop()

`Servers(workdir)` starts several and stops them all, for fixtures of any scope.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

APT_PACKAGES = "prometheus prometheus-pushgateway"
INSTALL_HINT = f"install them with: apt-get update && apt-get install -y {APT_PACKAGES}"


def binary(name: str) -> str:
    """Path of a Prometheus tool (PATH first, then Debian's /usr/bin); fails the test with the install command."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if path is None:
        pytest.fail(f"`{name}` not found; {INSTALL_HINT}", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


Sample = tuple[str, frozenset[tuple[str, str]]]  # (sample name, labels)


def scrape(url: str) -> dict[Sample, float]:
    """Every sample a /metrics endpoint serves now, parsed as Prometheus parses the text format."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(http_get(url).decode())
            for s in family.samples}  # fmt: skip


def sample(samples: dict[Sample, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@dataclass
class Server:
    """A server binary run as a child process, with its log kept for the failure message."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                http_get(f"{self.url}/-/ready", timeout=1.0)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not ready on {self.address} after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _spawn(name: str, argv: list[str], workdir: Path) -> Server:
    """Start a server that listens on port 0 and find the port it got. A port picked free beforehand
    (free_port) can be taken by another process before the server binds it, and on a machine shared by
    several test runs a readiness probe could then reach someone else's server."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir)
    deadline = time.monotonic() + 30
    while (port := listening_port(proc.pid)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            Server(name, 0, proc, log_path).stop()
            log_text = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} is not listening (exit code {proc.poll()}):\n{log_text}")
        time.sleep(0.05)
    server = Server(name, port, proc, log_path)
    server.wait_ready()
    return server


def listening_port(pid: int) -> int | None:
    """The TCP port a process listens on, from its sockets in /proc (Linux), or None while it has none."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    except OSError:
        return None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                return int(fields[1].rsplit(":", 1)[1], 16)
    return None



class Pushgateway(Server):
    @classmethod
    def start(cls, workdir: Path) -> Pushgateway:
        s = _spawn(
            "pushgateway",
            [
                binary("prometheus-pushgateway"),
                "--web.listen-address=127.0.0.1:0",
                # Debian's build persists to /var/lib/prometheus/pushgateway.data by default: keep tests in memory.
                "--persistence.file=",
                "--log.level=warn",
            ],
            workdir / "pushgateway",
        )
        return cls(s.name, s.port, s.proc, s.log_path)

    def groups(self) -> list[dict[str, Any]]:
        """The groups the gateway holds (its /api/v1/metrics data)."""
        return json.loads(http_get(f"{self.url}/api/v1/metrics"))["data"]

    def exposition(self) -> str:
        return http_get(f"{self.url}/metrics").decode()


@dataclass(frozen=True)
class ScrapeJob:
    targets: list[str]  # host:port
    honor_labels: bool = False
    metrics_path: str = "/metrics"


def scrape_config(jobs: Mapping[str, ScrapeJob], *, interval: str = "1s", rule_files: list[str] | None = None) -> dict:
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": rule_files or [],
        "scrape_configs": [
            {
                "job_name": name,
                "honor_labels": job.honor_labels,
                "metrics_path": job.metrics_path,
                "static_configs": [{"targets": job.targets}],
            }
            for name, job in jobs.items()
        ],
    }


class PromQLError(RuntimeError):
    pass


class Prometheus(Server):
    @classmethod
    def start(
        cls, workdir: Path, jobs: Mapping[str, ScrapeJob], *, interval: str = "1s", rule_files: list[str] | None = None
    ) -> Prometheus:
        root = workdir / "prometheus"
        root.mkdir(parents=True, exist_ok=True)
        config = root / "prometheus.yml"
        # JSON is YAML: no YAML writer needed for the config.
        config.write_text(json.dumps(scrape_config(jobs, interval=interval, rule_files=rule_files), indent=2))
        s = _spawn(
            "prometheus",
            [
                binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'data'}",
                "--web.listen-address=127.0.0.1:0",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            root,
        )
        return cls(s.name, s.port, s.proc, s.log_path)

    def api(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            body = json.loads(http_get(url, timeout=10))
        except urllib.error.HTTPError as err:
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise PromQLError(f"{path} {dict(params or {})}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: the result vector (a list of {metric, value})."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("query", params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self.api("query_range", {"query": expr, "start": start, "end": end, "step": step})["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def wait_for(
        self, expr: str, until: Callable[[list[dict[str, Any]]], bool] = bool, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Poll an instant query until `until(result)` holds (scrapes are asynchronous)."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if until(result):
                return result
            time.sleep(0.25)
        raise TimeoutError(f"{expr}: condition not met after {timeout:.0f}s; last result {result}\n{self.log_tail()}")


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    values = [float(r["value"][1]) for r in result if "value" in r]
    return [v for v in values if v == v and v not in (float("inf"), float("-inf"))]


@dataclass
class Servers:
    """Starts servers for one test and stops them all afterwards, even when the test fails."""

    workdir: Path
    started: list[Server] = field(default_factory=list)

    def pushgateway(self) -> Pushgateway:
        gw = Pushgateway.start(self.workdir)
        self.started.append(gw)
        return gw

    def prometheus(self, jobs: Mapping[str, ScrapeJob], **kwargs: Any) -> Prometheus:
        prom = Prometheus.start(self.workdir, jobs, **kwargs)
        self.started.append(prom)
        return prom

    def stop(self) -> None:
        for s in reversed(self.started):
            s.stop()

