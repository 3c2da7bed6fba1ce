"""A real S3 server on loopback for tests (moto's ThreadedMotoServer), and a TCP proxy that injects faults.

    from tests.s3server import S3Server, FaultyProxy

    with S3Server() as s3:                       # or as a pytest fixture: yield from s3_server()
        bucket = s3.create_bucket()              # a fresh, uniquely named bucket
        env = s3.env()                           # KWARP_S3_ENDPOINT, KWARP_S3_SECURE=0, credentials
        with FaultyProxy(s3.port) as proxy:      # 127.0.0.1:proxy.port forwards to the server
            proxy.drop_next(2)                   # reset the next two connections on accept
            proxy.cut_after(10 << 20)            # reset everything once 10 MB went upstream, until heal()
            proxy.blackhole()                    # accept connections and never answer, until heal()
            proxy.reset_downstream_after(8 << 20)  # reset the one connection that carries the 8th MB down
            proxy.ranges                         # [(first, last byte)] of every ranged request that passed
            hold = proxy.hold(rb"PUT /bucket/run/x/MANIFEST[.]json")  # stop a request when its head passes
            hold.reached.wait(10); ...; hold.release()  # forward it then, or hold.release(forward=False)

moto keeps every bucket of the process in one global backend, so tests share a server and isolate
themselves by bucket name. moto accepts any credentials unless IAM authentication is enabled
(`with s3.authentication():`), which is process-wide while it lasts.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from minio import Minio
from moto.server import ThreadedMotoServer

# The Range header of a request head (minio writes one per ranged GET).
_RANGE = re.compile(rb"\r\n[Rr]ange: *bytes=(\d+)-(\d*)")
ACCESS_KEY = "kwarp-test-access"
SECRET_KEY = "kwarp-test-secret"


class S3Server:
    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.host = "127.0.0.1"
        self.port = 0

    def start(self) -> S3Server:
        self._server.start()
        self.host, self.port = self._server.get_host_and_port()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The environment an s3:// store (or `kwarp store`) needs to reach this server."""
        return {
            "KWARP_S3_ENDPOINT": endpoint or self.endpoint,
            "KWARP_S3_SECURE": "0",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def client(self, endpoint: str | None = None) -> Minio:
        return Minio(endpoint or self.endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region="us-east-1")

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"kwarp-{uuid.uuid4().hex[:12]}"
        self.client().make_bucket(name)
        return name

    def _moto_api(self, path: str, body: bytes) -> dict:
        request = urllib.request.Request(
            f"http://{self.endpoint}/moto-api/{path}",
            data=body,
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"{}")

    @contextmanager
    def authentication(self, unauthenticated_requests: int = 0) -> Iterator[None]:
        """moto checks credentials against its IAM users (after `unauthenticated_requests` free ones)."""
        self._moto_api("reset-auth", str(unauthenticated_requests).encode())
        try:
            yield
        finally:
            self._moto_api("reset-auth", b"inf")


def s3_server() -> Iterator[S3Server]:
    """Generator for a pytest fixture: `s3 = pytest.fixture(scope="module")(s3_server)`."""
    with S3Server() as server:
        yield server


@dataclass
class Hold:
    """A request stopped in the proxy: its bytes wait there until `release`.

    `reached` is set when a request matching the pattern arrived (and `when()` said yes); `matched` holds
    the bytes that matched. `release(forward=True)` lets the held connection go on; `forward=False` resets
    it instead, so that the request never reaches the server (as when the client dies mid-request).
    """

    pattern: re.Pattern[bytes]
    when: Callable[[bytes], bool] | None = None
    reached: threading.Event = field(default_factory=threading.Event)
    matched: bytes = b""
    _go: threading.Event = field(default_factory=threading.Event)
    _forward: bool = True

    def release(self, forward: bool = True) -> None:
        self._forward = forward
        self._go.set()


class FaultyProxy:
    """A TCP proxy on 127.0.0.1 in front of a server: counts bytes and connections, breaks them on demand.

    Faults are real network faults seen by the client: a connection reset by the peer (RST), not an
    exception raised inside the client.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._drop = 0
        self._respond: list[bytes] = []
        self._cut_after: int | None = None
        self._reset_down_at: int | None = None
        self._down = False
        self._blackhole = False
        self._silent: list[socket.socket] = []  # connections held unanswered while black-holed
        self._closing = False
        self._holds: list[Hold] = []
        self.connections = 0
        self.dropped = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.ranges: list[tuple[int, int | None]] = []  # the Range header of every request, (first, last byte)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- faults

    def drop_next(self, n: int) -> None:
        """Reset the next n connections as soon as they are accepted."""
        with self._lock:
            self._drop += n

    def respond_next(self, raw_http_response: bytes) -> None:
        """Answer the next connection's first request with this raw response, then close it."""
        with self._lock:
            self._respond.append(raw_http_response)

    def cut_after(self, upstream_bytes: int) -> None:
        """Once this many more bytes went upstream, reset every connection and refuse new ones until heal()."""
        with self._lock:
            self._cut_after = self.bytes_up + upstream_bytes

    def reset_downstream_after(self, downstream_bytes: int) -> None:
        """Once this many more bytes went downstream, reset the connection carrying them (once; others go on)."""
        with self._lock:
            self._reset_down_at = self.bytes_down + downstream_bytes

    def hold(self, pattern: bytes, when: Callable[[bytes], bool] | None = None) -> Hold:
        """Stop the first request whose bytes match `pattern` (a regex over what the client sends, e.g. a
        request line) and for which `when(matched bytes)` holds, until the returned Hold is released."""
        held = Hold(re.compile(pattern), when)
        with self._lock:
            self._holds.append(held)
        return held

    def blackhole(self) -> None:
        """From now on accept every connection and never answer (a firewall that drops packets, a hung
        server): the client waits for its own timeouts. Open connections are reset first. Until heal()."""
        with self._lock:
            self._blackhole = True
        self._break_all()

    def heal(self) -> None:
        with self._lock:
            self._cut_after = None
            self._down = False
            self._blackhole = False
            silent, self._silent = self._silent, []
        for sock in silent:
            self._reset(sock)

    @property
    def down(self) -> bool:
        return self._down

    def reset_counters(self) -> None:
        with self._lock:
            self.connections = self.dropped = self.bytes_up = self.bytes_down = 0
            self.ranges = []

    # ---------------------------------------------------------------- plumbing

    @staticmethod
    def _reset(sock: socket.socket, *, wake: bool = True) -> None:
        # SO_LINGER with a zero timeout makes close() send RST: the client sees "connection reset by peer".
        # On Linux close() alone neither wakes a thread blocked in recv() on the socket nor sends anything
        # while that recv holds the file: shutdown() first wakes it (the peer sees FIN, then RST).
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        if wake:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        sock.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.connections += 1
                drop = self._down or self._drop > 0
                if self._drop > 0 and not self._down:
                    self._drop -= 1
                respond = self._respond.pop(0) if (not drop and self._respond) else None
                if drop:
                    self.dropped += 1
                elif self._blackhole:
                    self._silent.append(client)  # read by nobody, answered never
                    continue
            if drop:
                self._reset(client, wake=False)  # nobody reads it yet: a pure RST
                continue
            if respond is not None:
                threading.Thread(target=self._answer, args=(client, respond), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                self._reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
                down = self._down
            if down:  # the link went down while this connection was being set up
                self._reset(client)
                self._reset(upstream)
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _answer(self, client: socket.socket, response: bytes) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = client.recv(65536)
                if not chunk:
                    break
                data += chunk
            client.sendall(response)
        except OSError:
            pass
        finally:
            client.close()

    def _held(self, tail: bytes, data: bytes) -> Hold | None:
        """The armed hold that `data` (after `tail`, the end of the previous chunk) triggers, if any."""
        window = tail + data
        with self._lock:
            holds = list(self._holds)
        for held in holds:
            for m in held.pattern.finditer(window):
                if m.end() <= len(tail):
                    continue  # matched already in the previous chunk
                if held.when is not None and not held.when(m.group(0)):
                    continue
                with self._lock:
                    if held not in self._holds:
                        continue  # another connection took it
                    self._holds.remove(held)
                held.matched = m.group(0)
                return held
        return None

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        tail = b""
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if upstream and self._holds:
                    held = self._held(tail, data)
                    tail = (tail + data)[-512:]
                    if held is not None:
                        held.reached.set()
                        held._go.wait()
                        if not held._forward:
                            self._reset(src)
                            self._reset(dst)
                            return
                reset_this = False
                with self._lock:
                    if upstream:
                        self.bytes_up += len(data)
                        self.ranges += [(int(a), int(b) if b else None) for a, b in _RANGE.findall(data)]
                        if self._cut_after is not None and self.bytes_up >= self._cut_after:
                            self._down = True
                    else:
                        self.bytes_down += len(data)
                        if self._reset_down_at is not None and self.bytes_down >= self._reset_down_at:
                            self._reset_down_at, reset_this = None, True
                    down = self._down
                if reset_this:
                    self._reset(src)
                    self._reset(dst)
                    return
                if down:
                    self._reset(src)
                    self._reset(dst)
                    self._break_all()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            # One direction ended: end the other one too (closing twice is harmless).
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def _break_all(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for sock in conns:
            self._reset(sock)

    def close(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self._listener.close()
        self.heal()
        self._break_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


__all__ = ["ACCESS_KEY", "SECRET_KEY", "FaultyProxy", "Hold", "S3Server", "s3_server"]
