"""A stand-in for Kueue's admission of batch/v1 Jobs, for tests against the API-server emulator.

What it does is what Kueue's Job integration does to the Jobs it manages (kueue.sigs.k8s.io, "Run a
Kubernetes Job", "Workload", "Labels and Annotations"; kubernetes-sigs/kueue pkg/controller/jobframework):

- a Job labelled `kueue.x-k8s.io/queue-name: <LocalQueue>` is a workload of that queue; it must be
  suspended (Kueue's webhook suspends it on creation; the operator creates it suspended already);
- the queue admits workloads in creation order (StrictFIFO: the head blocks those behind it) while their
  requests fit the ClusterQueue's nominal quota; a workload's requests are all its pods' (parallelism x the
  pod's), admitted whole or not at all; admitting a Job means: unsuspend it and add the
  ResourceFlavor's node labels to its pod template's nodeSelector (what RunWithPodSetsInfo writes);
- a Job whose workload is admitted and that someone suspends is unsuspended again (the jobframework
  reconciler starts a suspended Job whose Workload is admitted): suspending is not how to stop it;
- the quota is released when the Job finishes (Complete/Failed) or is deleted.

It keeps no Workload objects in the API (the emulator serves no Kueue CRDs); `admissions` records
each admission (Job name, order) for the tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import kubernetes

from .background import Background
from .kube import Cluster
from .kube_jobs import job_finished

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU = "nvidia.com/gpu"


def requests(job: Mapping[str, Any]) -> dict[str, int]:
    """What a Job's Workload asks of the quota: one pod set of `parallelism` pods (Kueue's Job integration
    counts the pod set as the Job's parallelism), each with its GPUs. Admission is all or nothing: without
    Kueue's opt-in partial admission (annotation kueue.x-k8s.io/job-min-parallelism) the whole pod set
    must fit, so an Indexed Job of M members is admitted with all M pods or not at all."""
    containers = job["spec"]["template"]["spec"]["containers"]
    gpus = sum(int(((c.get("resources") or {}).get("requests") or {}).get(GPU, 0)) for c in containers)
    pods = int(job["spec"].get("parallelism", 1))
    return {"pods": pods, GPU: gpus * pods}


class KueueStandIn(Background):
    """One LocalQueue -> one ClusterQueue with a nominal quota (pods, GPUs) and one ResourceFlavor."""

    def __init__(self, cluster: Cluster, queue: str, quota: Mapping[str, int], *,
                 flavor_labels: Mapping[str, str] | None = None, namespace: str | None = None):  # fmt: skip
        super().__init__("kueue")
        self.cluster = cluster
        self.queue = queue
        self.namespace = namespace or cluster.namespace
        self.quota = dict(quota)
        self.flavor_labels = dict(flavor_labels or {"kueue.test/flavor": "default"})
        self.batch = kubernetes.client.BatchV1Api(cluster.client())
        self.admitted: dict[str, dict[str, int]] = {}  # Job uid -> usage
        self.admissions: list[str] = []  # Job names, in admission order
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []

    def set_quota(self, **quota: int) -> None:
        with self.lock:
            self.quota.update({GPU if k == "gpus" else k: v for k, v in quota.items()})

    def used(self) -> dict[str, int]:
        with self.lock:
            return self._used()

    def _used(self) -> dict[str, int]:
        out = {k: 0 for k in self.quota}
        for usage in self.admitted.values():
            for k, v in usage.items():
                out[k] = out.get(k, 0) + v
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as err:  # the tests see it
                self.errors.append(err)
            time.sleep(0.05)

    def step(self) -> None:
        """One pass of Kueue's reconcilers over the namespace's Jobs."""
        listing = self.cluster.raw("GET", f"/apis/batch/v1/namespaces/{self.namespace}/jobs",
                                   query=[("labelSelector", f"{QUEUE_LABEL}={self.queue}")])  # fmt: skip
        jobs = [j for j in listing["items"] if not j["metadata"].get("deletionTimestamp")]
        with self.lock:
            live = {j["metadata"]["uid"] for j in jobs if not job_finished(j)}
            for uid in list(self.admitted):
                if uid not in live:
                    del self.admitted[uid]  # finished or deleted: its quota comes back
            waiting = []
            for job in sorted(jobs, key=lambda j: (j["metadata"]["creationTimestamp"], j["metadata"]["name"])):
                uid = job["metadata"]["uid"]
                if job_finished(job):
                    continue
                if uid in self.admitted:
                    if job["spec"].get("suspend"):
                        self._start(job)  # admitted and suspended by someone else: Kueue starts it again
                    continue
                if job["spec"].get("suspend"):
                    waiting.append(job)
            for job in waiting:  # StrictFIFO
                need = requests(job)
                used = self._used()
                if any(used.get(k, 0) + v > self.quota.get(k, 0) for k, v in need.items() if v):
                    break
                self.admitted[job["metadata"]["uid"]] = need
                self.admissions.append(job["metadata"]["name"])
                self._start(job)

    def _start(self, job: Mapping[str, Any]) -> None:
        selector = {**(job["spec"]["template"]["spec"].get("nodeSelector") or {}), **self.flavor_labels}
        patch = {"spec": {"suspend": False, "template": {"spec": {"nodeSelector": selector}}}}
        try:
            self.batch.patch_namespaced_job(job["metadata"]["name"], self.namespace, patch,
                                            _content_type="application/merge-patch+json")  # fmt: skip
        except kubernetes.client.ApiException as err:
            if err.status != 404:
                raise
