#!/usr/bin/env bash
# kwarp end to end on a throwaway kind cluster: build both images, start MinIO, install the chart,
# seed the demo task into the bucket, apply examples/warprun-demo.yaml, wait until it succeeds.
#
# Needs docker, kind, kubectl, helm, openssl and a Python virtualenv with kwarp installed (.venv, or
# PYTHON=...). Run from anywhere: bash tests/e2e-kind/run.sh. KEEP=1 keeps the cluster afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-kwarp-e2e}
NS=kwarp
RUN=$(awk '/^  name:/ {print $2; exit}' examples/warprun-demo.yaml)
TAG=$(awk '/^appVersion:/ {gsub(/"/, "", $2); print $2}' charts/kwarp/Chart.yaml)  # the chart's default image tag
PYTHON=${PYTHON:-.venv/bin/python}
TIMEOUT_S=${TIMEOUT_S:-3600}
PF_PID=""

step() { printf '\n=== %s\n' "$*"; }

diagnose() {
  step "diagnostics"
  kubectl -n "$NS" get wr,jobs,pods -o wide || true
  kubectl -n "$NS" get wr "$RUN" -o jsonpath='{.status}' || true; echo
  kubectl -n "$NS" get events --sort-by=.lastTimestamp | tail -40 || true
  kubectl -n "$NS" logs deploy/kwarp --tail=200 || true
  for pod in $(kubectl -n "$NS" get pods -l kwarp.dev/run="$RUN" -o name 2>/dev/null); do
    echo "--- $pod"; kubectl -n "$NS" logs "$pod" --tail=60 || true
  done
}

finish() {
  local rc=$?
  [ -n "$PF_PID" ] && kill "$PF_PID" 2>/dev/null
  [ "$rc" -ne 0 ] && diagnose
  [ "${KEEP:-0}" = 1 ] || kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  exit "$rc"
}
trap finish EXIT

step "kind cluster $CLUSTER"
# KIND_NODE_IMAGE picks the Kubernetes version, e.g. kindest/node:v1.26.15 for the chart's floor.
kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || \
  kind create cluster --name "$CLUSTER" --wait 120s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}

step "images kwarp-operator:$TAG and kwarp-worker:$TAG (CPU torch: kind has no GPU)"
docker build --target operator -t "kwarp-operator:$TAG" .
docker build --target worker --build-arg WORKER_TORCH_INDEX=https://download.pytorch.org/whl/cpu \
  -t "kwarp-worker:$TAG" .
kind load docker-image --name "$CLUSTER" "kwarp-operator:$TAG" "kwarp-worker:$TAG"

step "MinIO and the kwarp-s3 Secret"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" create secret generic kwarp-s3 \
  --from-literal=AWS_ACCESS_KEY_ID=kwarp \
  --from-literal=AWS_SECRET_ACCESS_KEY="$(openssl rand -hex 16)" \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" apply -f tests/e2e-kind/minio.yaml
kubectl -n "$NS" rollout status deployment/minio --timeout=180s

step "demo task into s3://kwarp (through a port-forward)"
kubectl -n "$NS" port-forward service/minio 19000:9000 >/dev/null &
PF_PID=$!
for _ in $(seq 30); do (echo > /dev/tcp/127.0.0.1/19000) 2>/dev/null && break; sleep 1; done
secret() { kubectl -n "$NS" get secret kwarp-s3 -o jsonpath="{.data.$1}" | base64 -d; }
KWARP_S3_ENDPOINT=127.0.0.1:19000 KWARP_S3_SECURE=0 \
  AWS_ACCESS_KEY_ID=$(secret AWS_ACCESS_KEY_ID) AWS_SECRET_ACCESS_KEY=$(secret AWS_SECRET_ACCESS_KEY) \
  "$PYTHON" tests/e2e-kind/seed_demo.py examples/warprun-demo.yaml
kill "$PF_PID"; PF_PID=""

step "the kwarp chart (examples/values-minio.yaml)"
helm upgrade --install kwarp charts/kwarp -n "$NS" -f examples/values-minio.yaml --wait --timeout 5m

step "WarpRun $RUN"
kubectl -n "$NS" apply -f examples/warprun-demo.yaml
deadline=$((SECONDS + TIMEOUT_S))
until kubectl -n "$NS" wait "wr/$RUN" --for=jsonpath='{.status.phase}'=Succeeded --timeout=30s >/dev/null 2>&1; do
  kubectl -n "$NS" get wr "$RUN" --no-headers
  phase=$(kubectl -n "$NS" get wr "$RUN" -o jsonpath='{.status.phase}')
  [ "$phase" = Failed ] && { echo "WarpRun $RUN failed"; exit 1; }
  [ "$SECONDS" -lt "$deadline" ] || { echo "WarpRun $RUN did not succeed within ${TIMEOUT_S}s"; exit 1; }
done

step "succeeded"
kubectl -n "$NS" get wr "$RUN"
kubectl -n "$NS" get wr "$RUN" -o jsonpath='{.status}' | "$PYTHON" -m json.tool
