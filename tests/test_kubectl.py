"""A run driven the way a user drives a cluster: the real `kubectl` against the test API server.

kubectl applies the chart's CRD, applies examples/warprun-demo.yaml shrunk by a kustomize patch, shows
the run with `kubectl get wr` (the CRD's printer columns, served in the Table format), suspends and
resumes it with `kubectl patch`, and deletes it. The operator runs in-process; a test-side Job controller
does each Job's work (tests/kube.py's StatusJobRunner and tests/operator_harness.py's write_outputs).

kubectl is part of this project's machine image (/usr/bin/kubectl, Debian package `kubectl` of the Google
Cloud SDK: v1.32 with a dispatcher to 1.27-1.33); Debian's own `kubernetes-client` is 1.20, too old for
kustomize patches and server-side field validation. Set KWARP_KUBECTL to use another binary. Without one,
these tests are skipped with a message saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .kube import Cluster, RunningOperator, StatusJobRunner, wait_for
from .operator_harness import options, write_outputs

ROOT = Path(__file__).resolve().parents[1]
KUBECTL = os.environ.get("KWARP_KUBECTL") or shutil.which("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl not found (this project's machine image has /usr/bin/kubectl; or set KWARP_KUBECTL)",
)
RUN = "sentiment-demo"
NS = "default"

# The kustomize patch: a run the test-side Job controller can finish, in the operator's namespace, with a
# local store instead of MinIO.
KUSTOMIZATION = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: default
resources:
  - warprun-demo.yaml
patches:
  - target: {{group: kwarp.dev, version: v1alpha1, kind: WarpRun, name: sentiment-demo}}
    patch: |-
      - op: replace
        path: /spec/warp
        value: {{iterations: 1, policies: 2, steps: 2}}
      - op: replace
        path: /spec/storage
        value: {{url: "{store}"}}
      - op: replace
        path: /spec/evaluation/etas
        value: [0.0, 0.3, 1.0]
"""


class Kubectl:
    def __init__(self, cluster: Cluster, home: Path):
        home.mkdir(parents=True, exist_ok=True)
        self.env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "KUBECONFIG": str(cluster.kubeconfig)}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None
        done = subprocess.run([KUBECTL, *args], env=self.env, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def watch(self, *args: str) -> subprocess.Popen[str]:
        """`kubectl get <args> -w` in the background (Table events from a watch)."""
        assert KUBECTL is not None
        return subprocess.Popen([KUBECTL, "get", *args, "-w"], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def table(self, *args: str) -> list[dict[str, str]]:
        """`kubectl get ...` as rows keyed by the column headers."""
        lines = [line for line in self("get", *args).stdout.splitlines() if line.strip()]
        if not lines:
            return []
        headers = lines[0].split()
        return [dict(zip(headers, line.split(), strict=False)) for line in lines[1:]]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path / "cluster") as c:  # no CRD: the user installs it
        yield c


def test_a_user_drives_a_run_with_kubectl(cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    kubectl = Kubectl(cluster, tmp_path / "home")
    store = tmp_path / "store"
    store.mkdir()

    out = kubectl("apply", "-f", str(ROOT / "charts" / "kwarp" / "crds" / "warprun.yaml")).stdout
    assert "customresourcedefinition.apiextensions.k8s.io/warpruns.kwarp.dev created" in out
    assert [r["NAME"] for r in kubectl.table("crd")] == ["warpruns.kwarp.dev"]

    overlay = tmp_path / "overlay"
    overlay.mkdir()
    shutil.copy(ROOT / "examples" / "warprun-demo.yaml", overlay / "warprun-demo.yaml")
    (overlay / "kustomization.yaml").write_text(KUSTOMIZATION.format(store=store))
    rendered = yaml.safe_load(kubectl("kustomize", str(overlay)).stdout)
    assert rendered["spec"]["warp"]["steps"] == 2 and rendered["spec"]["training"]["learningRate"] == 1e-4

    with StatusJobRunner(cluster) as runner, RunningOperator(cluster, options()):
        assert f"warprun.kwarp.dev/{RUN} created" in kubectl("apply", "-k", str(overlay)).stdout
        watch = kubectl.watch("wr")  # what a user leaves open in another terminal
        request.addfinalizer(lambda: watch.poll() is None and watch.kill())
        # Its first listing (the header and the run's row) before anything changes: the watch goes on from
        # that listing, and a kubectl that starts slowly on a loaded machine would otherwise list after the
        # suspension below and never show it.
        assert watch.stdout is not None
        listed = [watch.stdout.readline(), watch.stdout.readline()]
        assert listed[1].startswith(RUN), listed

        def row() -> dict[str, str]:
            rows = kubectl.table("wr")
            return rows[0] if rows else {}

        # The prepare Job runs first; once it is done the members train.
        wait_for(lambda: "prepare" in " ".join(runner.running()), 30, message="the prepare Job")
        prepare = next(n for n in runner.running() if "prepare" in n)
        write_outputs(runner.jobs[prepare].job)
        runner.succeed(prepare)
        wait_for(lambda: row().get("PHASE") == "Training", 30, message=lambda: f"Training; kubectl get wr: {row()}")
        first = row()
        assert list(first) == ["NAME", "PHASE", "ITERATION", "MEMBERS", "AGE"][:2] + list(first)[2:]
        assert (first["NAME"], first["ITERATION"], first["MEMBERS"]) == (RUN, "0", "0/2")
        assert "REWARD" in kubectl("get", "wr").stdout.splitlines()[0]
        assert kubectl("get", "warprun", RUN, "-o", "jsonpath={.spec.training.learningRate}").stdout == "0.0001"
        wait_for(lambda: len(runner.running()) == 2, 30, message="both members running")

        kubectl("patch", "wr", RUN, "--type", "merge", "-p", '{"spec":{"suspend":true}}')
        wait_for(lambda: row().get("PHASE") == "Suspended", 30, message=lambda: f"Suspended; {row()}")
        wait_for(lambda: not runner.running(), 30, message="the members suspended")

        kubectl("patch", "wr", RUN, "--type", "merge", "-p", '{"spec":{"suspend":false}}')
        wait_for(lambda: row().get("PHASE") == "Training", 30, message=lambda: f"Training again; {row()}")
        wait_for(lambda: len(runner.running()) == 2, 30, message="the members resumed")

        assert f'warprun.kwarp.dev "{RUN}" deleted' in kubectl("delete", "wr", RUN, "--timeout=60s").stdout
        assert "No resources found" in kubectl("get", "wr").stderr
        wait_for(lambda: not kubectl.table("jobs"), 30, message="the run's Jobs collected")

    watch.terminate()
    rest, complaints = watch.communicate(timeout=30)
    seen = "".join(listed) + rest
    assert "Warning" not in complaints, complaints
    phases = [line.split()[1] for line in seen.splitlines()[1:] if line.startswith(RUN) and len(line.split()) > 2]
    assert {"Training", "Suspended"} <= set(phases), seen
    assert seen.splitlines()[0].split()[:4] == ["NAME", "PHASE", "ITERATION", "MEMBERS"], seen


def test_kubectl_refuses_a_misspelt_field_and_the_server_names_it(cluster: Cluster, tmp_path: Path) -> None:
    """kubectl's default --validate=strict: the API server refuses `learning_rate` (the CRD's name is
    learningRate); with --validate=warn it stores the run and warns that the field was dropped."""
    kubectl = Kubectl(cluster, tmp_path / "home")
    kubectl("apply", "-f", str(ROOT / "charts" / "kwarp" / "crds" / "warprun.yaml"))
    doc = yaml.safe_load((ROOT / "examples" / "warprun-demo.yaml").read_text())
    doc["metadata"]["namespace"] = NS
    doc["spec"]["training"]["learning_rate"] = doc["spec"]["training"].pop("learningRate")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(doc))

    refused = kubectl("apply", "-f", str(path), check=False)
    assert refused.returncode != 0
    assert 'unknown field "spec.training.learning_rate"' in refused.stderr, refused.stderr

    warned = kubectl("apply", "--validate=warn", "-f", str(path))
    assert 'unknown field "spec.training.learning_rate"' in warned.stderr, warned.stderr
    stored = kubectl("get", "wr", RUN, "-o", "jsonpath={.spec.training.learningRate}").stdout
    assert stored == "1e-06"  # the default: what a cluster run would silently have trained with


def test_kubectl_sees_the_api_server_refuse_an_invalid_value(cluster: Cluster, tmp_path: Path) -> None:
    kubectl = Kubectl(cluster, tmp_path / "home")
    kubectl("apply", "-f", str(ROOT / "charts" / "kwarp" / "crds" / "warprun.yaml"))
    doc = yaml.safe_load((ROOT / "examples" / "warprun-demo.yaml").read_text())
    doc["metadata"]["namespace"] = NS
    doc["spec"]["training"]["temperature"] = 0
    doc["spec"]["warp"]["anchor"] = "kl"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    refused = kubectl("apply", "-f", str(path), check=False)
    assert refused.returncode != 0
    assert f'The WarpRun "{RUN}" is invalid' in refused.stderr, refused.stderr  # kubectl's rendering of the causes
    assert "spec.training.temperature in body should be greater than 0" in refused.stderr
    assert 'spec.warp.anchor: Unsupported value: "kl"' in refused.stderr
