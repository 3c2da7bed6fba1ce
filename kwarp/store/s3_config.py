"""Settings, credentials and error classification of the s3:// store (no I/O).

The spec comes first and the environment fills in; see kwarp.store.s3 for the table of settings.
"""

from __future__ import annotations

import http.client
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError

from kwarp.store.base import StoreError

if TYPE_CHECKING:
    from kwarp.core.spec import StorageSpec

MiB = 1 << 20
MIN_PART_SIZE = 5 * MiB  # S3's smallest multipart part (the last part excepted)
MAX_PART_SIZE = 5 << 30

# -------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter, per operation (one object, one range)."""

    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0
    deadline_s: float = 300.0


def backoff_delay(policy: RetryPolicy, retry: int, rand: float) -> float:
    """Seconds to wait before retry number `retry` (0-based), given `rand` uniform in [0, 1).

    "Equal jitter": half the exponential step is fixed, half is random. The fixed half makes the
    wait grow for sure; the random half spreads clients that failed together (a MinIO restart)
    so that they do not come back in lockstep.
    """
    step = min(policy.max_delay_s, policy.base_delay_s * (2**retry))
    return step / 2 + rand * step / 2


@dataclass(frozen=True)
class S3Config:
    endpoint: str
    """host[:port], no scheme."""
    secure: bool = True
    region: str | None = None
    part_size: int = 64 * MiB
    concurrency: int = 8
    retry: RetryPolicy = RetryPolicy()
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            raise StoreError(
                f"S3 part size {self.part_size} is out of range: KWARP_S3_PART_SIZE must be between 5Mi and 5Gi"
            )
        if self.concurrency < 1:
            raise StoreError(f"KWARP_S3_CONCURRENCY must be at least 1, got {self.concurrency}")
        if self.retry.max_attempts < 1:
            raise StoreError(f"KWARP_S3_MAX_ATTEMPTS must be at least 1, got {self.retry.max_attempts}")


_SIZE = re.compile(r"^\s*(\d+)\s*(|k|ki|kib|kb|m|mi|mib|mb|g|gi|gib|gb)\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "k": 10**3, "kb": 10**3, "ki": 1 << 10, "kib": 1 << 10,
    "m": 10**6, "mb": 10**6, "mi": 1 << 20, "mib": 1 << 20,
    "g": 10**9, "gb": 10**9, "gi": 1 << 30, "gib": 1 << 30,
}  # fmt: skip


def parse_size(text: str, name: str = "size") -> int:
    """Bytes from '67108864', '64Mi', '64MiB' or '64M' (Kubernetes style: M is 10^6, Mi is 2^20)."""
    m = _SIZE.match(text)
    if not m:
        raise StoreError(f"{name}: '{text}' is not a size; write bytes or a number with Ki/Mi/Gi (e.g. 64Mi)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def split_endpoint(endpoint: str) -> tuple[str, bool | None]:
    """('host:port', TLS implied by a scheme or None) from 'host:port' or 'http(s)://host:port'."""
    secure: bool | None = None
    text = endpoint.strip()
    for scheme, tls in (("https://", True), ("http://", False)):
        if text.lower().startswith(scheme):
            text, secure = text[len(scheme) :], tls
    text = text.rstrip("/")
    if not text or "/" in text:
        raise StoreError(
            f"S3 endpoint '{endpoint}' must be host[:port] (no path): fix spec.storage.endpoint / KWARP_S3_ENDPOINT"
        )
    return text, secure


def _env_bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise StoreError(f"{name} must be 0 or 1, got '{value}'")


def _env_number(env: Mapping[str, str], name: str, default: float, kind: type = float) -> Any:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise StoreError(f"{name} must be a number, got '{raw}'") from None


def tls_of(storage: StorageSpec | None, env: Mapping[str, str], scheme_secure: bool | None) -> bool:
    """Whether to talk TLS to the endpoint in use.

    An explicit scheme (http:// or https://) on that endpoint decides. Otherwise a run that names its own
    endpoint decides with spec.storage.secure; the environment's KWARP_S3_SECURE (the operator-wide
    default from the chart) goes with the environment's KWARP_S3_ENDPOINT only. So an operator default
    of plain HTTP for the in-cluster MinIO never downgrades a run's own endpoint.
    """
    if scheme_secure is not None:
        return scheme_secure
    if storage is not None and storage.endpoint:
        return storage.secure
    if env.get("KWARP_S3_SECURE", "").strip():
        return _env_bool(env["KWARP_S3_SECURE"], "KWARP_S3_SECURE")
    return storage.secure if storage is not None else True


def resolve_config(storage: StorageSpec | None, env: Mapping[str, str]) -> S3Config:
    """The S3 settings of a store: spec.storage first, the environment where the spec is silent."""
    raw_endpoint = (storage.endpoint if storage is not None else None) or env.get("KWARP_S3_ENDPOINT")
    if not raw_endpoint:
        raise StoreError(
            "an s3:// store needs an endpoint: set spec.storage.endpoint or KWARP_S3_ENDPOINT "
            "(host:port of MinIO; s3.amazonaws.com for AWS S3)"
        )
    endpoint, scheme_secure = split_endpoint(raw_endpoint)
    secure = tls_of(storage, env, scheme_secure)
    region = (
        (storage.region if storage is not None else None)
        or env.get("AWS_REGION")
        or env.get("AWS_DEFAULT_REGION")
    )
    part_size = (
        parse_size(env["KWARP_S3_PART_SIZE"], "KWARP_S3_PART_SIZE")
        if env.get("KWARP_S3_PART_SIZE")
        else 64 * MiB
    )
    default = RetryPolicy()
    retry = RetryPolicy(
        max_attempts=_env_number(env, "KWARP_S3_MAX_ATTEMPTS", default.max_attempts, int),
        base_delay_s=default.base_delay_s,
        max_delay_s=default.max_delay_s,
        deadline_s=_env_number(env, "KWARP_S3_RETRY_DEADLINE_S", default.deadline_s),
    )
    return S3Config(
        endpoint=endpoint,
        secure=secure,
        region=region or None,
        part_size=part_size,
        concurrency=_env_number(env, "KWARP_S3_CONCURRENCY", 8, int),
        retry=retry,
        connect_timeout_s=_env_number(env, "KWARP_S3_CONNECT_TIMEOUT_S", 10.0),
        read_timeout_s=_env_number(env, "KWARP_S3_READ_TIMEOUT_S", 120.0),
    )


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    source: str = ""
    """The environment variables they came from (named in error messages, never the values)."""


_CREDENTIAL_VARS = (
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"),
    ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"),
)


def credentials_from_env(env: Mapping[str, str]) -> Credentials | None:
    """The first complete pair of credential variables, or None (anonymous access)."""
    for key_var, secret_var in _CREDENTIAL_VARS:
        key, secret = env.get(key_var), env.get(secret_var)
        if key and secret:
            token = env.get("AWS_SESSION_TOKEN") if key_var.startswith("AWS_") else None
            return Credentials(key, secret, token or None, source=f"{key_var}/{secret_var}")
        if key or secret:
            missing = secret_var if key else key_var
            raise StoreError(f"{key_var if key else secret_var} is set but {missing} is not: set both")
    return None


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://bucket/prefix."""
    if not url.startswith("s3://"):
        raise StoreError(f"'{url}' is not an s3:// URL")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
        raise StoreError(f"'{bucket}' in {url} is not a valid bucket name (3-63 of a-z, 0-9, '.', '-')")
    return bucket, clean_key(prefix, allow_root=True)


def clean_key(key: str, *, allow_root: bool = False) -> str:
    stripped = key.strip("/")
    if not stripped and allow_root:
        return ""
    parts = stripped.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid store key '{key}'")
    return "/".join(parts)


def upload_streams(n_large_files: int, concurrency: int) -> tuple[int, int]:
    """(large files uploaded at once, parallel parts per file), about `concurrency` parts in flight.

    Two files at a time keep the link busy while one of them reads its next part from disk or
    completes its multipart upload; one file gets every stream when it is alone.
    """
    files = max(1, min(n_large_files, 2 if concurrency >= 4 else 1))
    return files, max(1, concurrency // files)


# -------------------------------------------------------------------------------- errors

# S3 error codes that a later attempt can cure: the server is busy, restarting or briefly short of quorum.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "OperationAborted",
        "XMinioServerNotInitialized",
        "XMinioReadQuorum",
        "XMinioWriteQuorum",
    }
)
CREDENTIAL_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "InvalidClientTokenId",
        "AllAccessDisabled",
    }
)


class ShortRead(ConnectionError):
    """The connection ended before the requested bytes arrived."""


class Cancelled(Exception):
    """Another transfer of the same checkpoint failed: stop this one."""


def root_cause(err: BaseException) -> BaseException:
    reason = getattr(err, "reason", None)  # urllib3's MaxRetryError wraps the real error
    return reason if isinstance(reason, BaseException) else err


def is_transient(err: BaseException) -> bool:
    """Whether another attempt may succeed: network faults, timeouts, 5xx and 503 SlowDown."""
    err = root_cause(err)
    if isinstance(err, S3Error):
        status = getattr(err.response, "status", 0) or 0
        return err.code in TRANSIENT_CODES or status >= 500
    if isinstance(err, ServerError):
        return err.status_code >= 500 or err.status_code == 429
    if isinstance(err, InvalidResponseError):
        status = getattr(err, "_code", 0) or 0  # a proxy or load balancer answering 502/503 with HTML
        return isinstance(status, int) and (status >= 500 or status == 429)
    if isinstance(err, urllib3.exceptions.SSLError):
        return False  # TLS against a plain HTTP port, or an untrusted certificate: retrying cannot help
    return isinstance(
        err,
        urllib3.exceptions.HTTPError
        | ConnectionError
        | TimeoutError
        | socket.timeout
        | http.client.HTTPException,
    )


def describe_error(err: BaseException) -> str:
    err = root_cause(err)
    if isinstance(err, S3Error):
        return f"{err.code}: {err.message}"
    text = str(err)
    # urllib3 messages repeat the connection object's repr; the class name and the tail say enough.
    text = re.sub(r"<urllib3\.[^>]*>:?\s*", "", text)
    return f"{type(err).__name__}: {text}"[:300]


