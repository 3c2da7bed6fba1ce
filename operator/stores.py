"""A run's store as the operator opens it: with the credentials of the Secret the spec names, reused
between reconciles, and the ownership record the operator writes for the run."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from kwarp.core.ownership import Owner, spec_digest
from kwarp.core.spec import WarpRunSpec
from kwarp.store import Store, StoreError, open_store

from .jobs import SECRET_KEYS
from .kube import ApiException, Kube
from .store_bounds import Breakers, bounded

log = logging.getLogger(__name__)


class StoreOpener:
    """Opens a run's store, with the credentials of the Secret its spec names (read through the API and
    kept for `secret_ttl` seconds). Stores are reused, so their connection pools are too.

    Without `get` on Secrets (a deliberately narrower RBAC), the operator's own environment is used.
    """

    def __init__(self, kube: Kube, env: Mapping[str, str] | None = None, *, default_secret: str | None = None,
                 secret_ttl: float = 60.0, breakers: Breakers | None = None):  # fmt: skip
        self.kube = kube
        self.env = dict(os.environ if env is None else env)
        self.default_secret = default_secret
        self.secret_ttl = secret_ttl
        self._secrets: dict[tuple[str, str], tuple[float, dict[str, str] | None]] = {}
        self._stores: dict[Any, Store] = {}
        self.breakers = breakers or Breakers()
        self._lock = threading.Lock()

    def _secret(self, namespace: str, name: str) -> dict[str, str] | None:
        key = (namespace, name)
        with self._lock:
            cached = self._secrets.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.secret_ttl:
            return cached[1]
        try:
            data = self.kube.read_secret(namespace, name)
        except ApiException as err:
            if err.status != 403:
                raise
            log.warning("no permission to read Secret %s/%s: using the operator's own S3 credentials", namespace, name)
            data = {}
        if data is None:
            raise StoreError(
                f"spec.storage.secretName: Secret '{name}' does not exist in namespace '{namespace}'; "
                f"create it with keys {' and '.join(SECRET_KEYS)}"
            )
        with self._lock:
            self._secrets[key] = (time.monotonic(), data)
        return data

    def open(self, namespace: str, spec: WarpRunSpec) -> Store:
        storage = spec.storage
        if not storage.is_s3:
            key: Any = ("file", storage.url)
            with self._lock:
                if key not in self._stores:
                    self._stores[key] = open_store(storage.url, storage)
                return self._stores[key]
        from kwarp.store.s3 import S3Store
        from kwarp.store.s3_config import credentials_from_env, parse_s3_url, resolve_config

        env = dict(self.env)
        secret = storage.secret_name or self.default_secret
        if secret:
            data = self._secret(namespace, secret) or {}
            env.update({k: data[k] for k in SECRET_KEYS if k in data})
        key = ("s3", storage.model_dump_json(), tuple(env.get(k) for k in SECRET_KEYS))
        with self._lock:
            if key not in self._stores:
                bucket, prefix = parse_s3_url(storage.url)
                config = bounded(resolve_config(storage, env))  # seconds, not minutes: see store_bounds
                self._stores[key] = S3Store(bucket, prefix, config=config, credentials=credentials_from_env(env),
                                            breaker=self.breakers.of(config))  # fmt: skip
            return self._stores[key]


def store_url(spec: WarpRunSpec) -> str:
    url = spec.storage.url
    return url if "://" in url else f"file://{url}"


def owner_of(namespace: str, name: str, uid: str, spec: WarpRunSpec, now: str = "") -> Owner:
    return Owner(namespace=namespace, name=name, uid=uid, spec_digest=spec_digest(spec), executor="operator", created=now)
