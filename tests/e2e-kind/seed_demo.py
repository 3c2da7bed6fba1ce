"""Put the demo task's models and prompts where examples/warprun-demo.yaml says they are.

    KWARP_S3_ENDPOINT=127.0.0.1:19000 KWARP_S3_SECURE=0 AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \
        python tests/e2e-kind/seed_demo.py examples/warprun-demo.yaml

Builds the demo task (`kwarp task build`), creates the bucket, and copies each location of the task's
own WarpRun (policy, reward, train and eval prompts; local paths) to the s3:// location the cluster
document names for the same field: checkpoints with `kwarp store cp`, files as single objects.
The endpoint and credentials come from the environment (a port-forward to MinIO in run.sh), not from
the cluster document, whose endpoint is the in-cluster Service name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from minio import Minio

from kwarp.core.spec import WarpRun, load
from kwarp.store import open_store


def locations(run: WarpRun) -> dict[str, str | None]:
    spec = run.spec
    return {
        "spec.policy.location": spec.policy.location,
        "spec.reward.location": spec.reward.location,
        "spec.data.train": spec.data.train,
        "spec.data.eval": spec.data.eval,
    }


def main(cluster_doc: str) -> int:
    kwarp = [sys.executable, "-P", "-m", "kwarp"]
    subprocess.run([*kwarp, "task", "build"], check=True)
    task_dir = Path(subprocess.run([*kwarp, "task", "path"], check=True, capture_output=True, text=True).stdout.strip())
    local, cluster = load(task_dir / "warprun.yaml"), load(cluster_doc)

    endpoint = os.environ["KWARP_S3_ENDPOINT"]
    secure = os.environ.get("KWARP_S3_SECURE", "1") not in ("0", "false")
    client = Minio(endpoint, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], secure=secure)
    buckets = {url.removeprefix("s3://").split("/", 1)[0] for url in locations(cluster).values() if url}
    for bucket in sorted(buckets):
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
            print(f"created bucket {bucket}")

    for field, dst in locations(cluster).items():
        src = locations(local)[field]
        if dst is None or src is None:
            assert dst == src, f"{field}: the task has {src!r}, {cluster_doc} has {dst!r}"
            continue  # e.g. a reward given as a callable: nothing to upload
        assert dst.startswith("s3://"), f"{field}: {cluster_doc} must name an s3:// location, got {dst}"
        path = Path(src.removeprefix("file://"))
        if path.is_dir():
            subprocess.run([*kwarp, "store", "cp", str(path), dst], check=True)
        else:
            bucket, _, key = dst.removeprefix("s3://").partition("/")
            open_store(f"s3://{bucket}").put_bytes(key, path.read_bytes())
            print(f"uploaded {path} -> {dst} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "examples/warprun-demo.yaml"))
