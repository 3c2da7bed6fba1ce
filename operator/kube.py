"""The Kubernetes API calls the operator makes, on plain dicts.

Objects stay JSON (no client model classes): the manifest builders and observers are pure functions
over dicts, and listing a hundred runs' Jobs does not pay for model deserialization. Each method is
one request; every verb used here is listed in docs/internals.md ("Operator RBAC").
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import kubernetes

from kwarp.core.spec import API_GROUP, API_VERSION, PLURAL

from .jobs import LABEL_RUN

MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = (10, 60)  # (connect, read) seconds

ApiException = kubernetes.client.ApiException


class Kube:
    def __init__(self, client: kubernetes.client.ApiClient):
        self.client = client

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        response = self.client.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=REQUEST_TIMEOUT,
        )
        data = response.data
        return json.loads(data) if data else None

    @staticmethod
    def _run_path(namespace: str, name: str = "") -> str:
        base = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{quote(namespace)}/{PLURAL}"
        return f"{base}/{quote(name)}" if name else base

    # -- WarpRuns: get, patch (status)
    def get_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", self._run_path(namespace, name))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def patch_run_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return self._call(
                "PATCH", self._run_path(namespace, name) + "/status", {"status": patch}, content_type=MERGE_PATCH
            )
        except ApiException as err:
            if err.status == 404:
                return None  # deleted meanwhile
            raise

    # -- Jobs: list, create, patch, delete
    def list_jobs(self, namespace: str, run: str) -> list[dict[str, Any]]:
        return self.list_jobs_at(namespace, run)[0]

    def list_jobs_at(self, namespace: str, run: str) -> tuple[list[dict[str, Any]], str | None]:
        """The run's Jobs and the resourceVersion the LIST was served at."""
        listing = self._call(
            "GET", f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs", query=[("labelSelector", f"{LABEL_RUN}={run}")]
        )
        return list(listing.get("items") or []), (listing.get("metadata") or {}).get("resourceVersion")

    def create_job(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create a Job and return it as stored (with its uid); None if one of that name exists already
        (deterministic names make this a no-op)."""
        try:
            return self._call("POST", f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs", manifest)
        except ApiException as err:
            if err.status == 409:
                return None
            raise

    def set_job_suspended(self, namespace: str, name: str, suspend: bool) -> None:
        self.patch_job(namespace, name, {"spec": {"suspend": suspend}})

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """A merge patch of a Job (suspend, resume; fail a stalled one); a Job gone meanwhile is no error."""
        try:
            self._call(
                "PATCH",
                f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs/{quote(name)}",
                patch,
                content_type=MERGE_PATCH,
            )
        except ApiException as err:
            if err.status != 404:
                raise

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and, before it, its pods (Foreground: the Job is gone only once they are)."""
        try:
            self._call(
                "DELETE",
                f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs/{quote(name)}",
                {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"},
            )
        except ApiException as err:
            if err.status != 404:
                raise

    # -- Services: create (the headless Service of a multi-node member)
    def create_service(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """Create a Service; False if it exists already."""
        try:
            self._call("POST", f"/api/v1/namespaces/{quote(namespace)}/services", manifest)
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    # -- pods: list (why a Job failed; which pods cannot start)
    def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        listing = self._call(
            "GET", f"/api/v1/namespaces/{quote(namespace)}/pods", query=[("labelSelector", f"job-name={job}")]
        )
        return list(listing.get("items") or [])

    def run_pods(self, namespace: str, run: str) -> list[dict[str, Any]]:
        """The pods of a run's Jobs (their template carries the run label): one list per reconcile."""
        listing = self._call(
            "GET", f"/api/v1/namespaces/{quote(namespace)}/pods", query=[("labelSelector", f"{LABEL_RUN}={run}")]
        )
        return list(listing.get("items") or [])

    # -- secrets: get (the S3 credentials a run names, to read its store)
    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            secret = self._call("GET", f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}")
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        data = secret.get("data") or {}
        out = {k: base64.b64decode(v).decode() for k, v in data.items()}
        out.update(secret.get("stringData") or {})
        return out
