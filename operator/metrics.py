"""The operator's /metrics endpoint: OperatorMetrics (kwarp.observability.metrics) on a registry of its own.

Runs by phase, each run's phase and iteration, reconcile durations and errors, Jobs created, failed
attempts and retries by task kind. The liveness endpoint is kopf's (`--liveness-port`), not this one.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from kwarp.observability.metrics import OperatorMetrics


class MetricsServer:
    def __init__(self, port: int, host: str = "0.0.0.0", registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.metrics = OperatorMetrics.create(self.registry)
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self.port = self._server.server_port  # the port actually bound (0 asks for a free one)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
