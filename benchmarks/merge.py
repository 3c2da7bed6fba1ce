"""Benchmark the streaming merge against a plain safetensors copy of the same inputs, in one run.

    python benchmarks/merge.py [--size-gb 1.0] [--shards 4] [--members 2 4] [--out DIR] [--keep] [--baseline REV]

Builds a synthetic bf16 checkpoint of about --size-gb (Llama-like names: `model.layers.<i>.*`, an
embedding and a head) in --shards shards, plus members (θ_init + a small random task vector). Then,
for each M, it runs in child processes:

- copy:     every input checkpoint (θ_init and the M members) loaded shard by shard with safetensors,
            and one of them saved again: the I/O floor of a merge (read M + 1, write 1);
- durable:  the same copy, each written shard and the folder fsynced before the child's work ends: the I/O
            floor of a merge whose output must be on the disk when it is published, as kwarp's is. Printed
            beside the goal's ratio (merge work over the copy's), not in its place;
- merge:    `kwarp merge` in folder mode (SLERP, layer granularity, manifest included), its output written
            by direct I/O where the filesystem takes it (kwarp.merger.writer);
- buffered: the same merge with buffered writes (direct_writes=False, the engine before direct I/O): the
            before/after of the output write in one run;
- baseline: with --baseline REV, the same merge by the kwarp of git revision REV (`git archive` of this
            repository, its folders laid out as the kwarp package its pyproject maps them to, first on
            the child's PYTHONPATH): an older engine before/after in the same run, on the same files;
- command:  the `kwarp merge` command itself (`python -P -m kwarp merge --init .. --member .. --out ..`), timed
            as a whole command from its start to its exit: what mergekit's command is compared with;
- mergekit: for M = 2, when mergekit is installed (`mergekit-yaml` on PATH or --mergekit-yaml), its
            `nuslerp` (SLERP of the two task vectors) on the same files, timed as a whole command, in each
            round beside the others;
- idle:     the interpreter with the merge process's imports (`kwarp.merger.startup.import_engine`).

Each child's wall time and peak RSS (os.wait4's ru_maxrss: that child only) are measured from the
parent, and each child's CPU seconds after its imports from inside. Figures: effective throughput
(input + output bytes per second), the merge/copy time ratio, and peak RSS over idle. The files are
written first and the page cache is warm for both (the inputs fit in memory here); a sync separates the
measurements, and outputs are deleted only after every child of an M has run (see `run`). With --repeat N,
the median of each round's merge/copy ratios is printed as well. Speed is printed, never asserted.

Printed beside the ratios, to read them by: each fastest child's start-up and exit (its wall time less its work),
and the disk under the outputs before the children and after each M's (`disk_probe`: the output's size written by
direct I/O, then fsynced). The kwarp merge waits for that disk (its output is durable when it exits); the copy
and mergekit write into the page cache and exit before the disk has their bytes.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 1e9
VOCAB = 32000
FFN_RATIO = 2.75  # Llama's intermediate/hidden


# ------------------------------------------------------------------ synthetic checkpoints


def shapes(size_gb: float, layers: int) -> dict[str, tuple[int, ...]]:
    """Llama-like tensor shapes totalling about size_gb in bf16: solve the hidden size for `layers` blocks."""
    params = size_gb * GB / 2
    per_block_sq = 4 + 3 * FFN_RATIO  # q, k, v, o (h²) and gate, up, down (h·ffn)
    a, b = layers * per_block_sq, 2 * VOCAB
    hidden = (-b + math.sqrt(b * b + 4 * a * params)) / (2 * a)
    h = max(64, int(round(hidden / 64)) * 64)
    ffn = int(round(h * FFN_RATIO / 64)) * 64
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, h)}
    for i in range(layers):
        p = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"{p}.self_attn.{proj}.weight"] = (h, h)
        out[f"{p}.mlp.gate_proj.weight"] = (ffn, h)
        out[f"{p}.mlp.up_proj.weight"] = (ffn, h)
        out[f"{p}.mlp.down_proj.weight"] = (h, ffn)
        out[f"{p}.input_layernorm.weight"] = (h,)
        out[f"{p}.post_attention_layernorm.weight"] = (h,)
    out["model.norm.weight"] = (h,)
    out["lm_head.weight"] = (VOCAB, h)
    return out


def build(root: Path, size_gb: float, shards: int, members: int, layers: int) -> tuple[Path, list[Path]]:
    import torch

    from kwarp.core.weights import ShardWriter

    spec = shapes(size_gb, layers)
    total = sum(math.prod(s) * 2 for s in spec.values())
    folders = [root / "init"] + [root / f"member-{m}" for m in range(members)]
    writers = [ShardWriter(f, max_shard_bytes=math.ceil(total / shards)) for f in folders]
    gen = torch.Generator().manual_seed(0)
    for name, shape in spec.items():
        init = torch.randn(shape, generator=gen) * 0.02
        if name.endswith("norm.weight"):
            init += 1.0
        writers[0].add(name, init.to(torch.bfloat16))
        for w in writers[1:]:
            w.add(name, (init + 1e-3 * torch.randn(shape, generator=gen)).to(torch.bfloat16))
    hidden = spec["model.norm.weight"][0]
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": spec["model.layers.0.mlp.up_proj.weight"][0], "num_hidden_layers": layers,
              "num_attention_heads": hidden // 64, "num_key_value_heads": hidden // 64, "rms_norm_eps": 1e-5,
              "max_position_embeddings": 2048, "tie_word_embeddings": False, "vocab_size": VOCAB,
              "torch_dtype": "bfloat16"}
    for f, w in zip(folders, writers, strict=True):
        w.close()
        (f / "config.json").write_text(json.dumps(config))
    return folders[0], folders[1:]


# ------------------------------------------------------------------ child processes


def child(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Runs in the child process; returns figures measured from inside."""
    result = _child(kind, params)
    result["vm_hwm"] = _vm_hwm()
    return result


def _vm_hwm() -> int:
    """Peak RSS of this process's memory map since exec (bytes), a cross-check of the parent's ru_maxrss."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu() -> float:
    """User + system seconds of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    if kind == "build":
        init, members = build(Path(params["root"]), params["size_gb"], params["shards"], params["members"],
                              params["layers"])
        return {"init": str(init), "members": [str(m) for m in members]}
    if kind == "idle":
        from kwarp.merger.startup import import_engine

        import_engine()  # what a merge process imports before its work
        return {}
    if kind in ("copy", "durable"):
        from safetensors.torch import load_file, save_file

        imported, cpu = time.perf_counter(), _cpu()
        written = 0
        dst = Path(params["out"])
        dst.mkdir(parents=True)
        for k, src in enumerate(params["inputs"]):  # read every input, write one checkpoint: a merge's I/O
            for shard in sorted(Path(src).glob("*.safetensors")):
                tensors = load_file(shard)
                if k == 0:
                    save_file(tensors, dst / shard.name)
                    written += (dst / shard.name).stat().st_size
                    if kind == "durable":
                        _fsync(dst / shard.name)
                del tensors
        if kind == "durable":
            _fsync(dst)  # the folder's entries, as the merger's publish does
        return {"seconds": time.perf_counter() - imported, "import_seconds": imported - started,
                "work_cpu": _cpu() - cpu, "bytes_written": written}
    if kind in ("merge", "buffered", "baseline"):
        from kwarp.merger.cli import configure_threads, merge_folders

        threads = configure_threads(params["threads"])
        imported, cpu = time.perf_counter(), _cpu()
        # (a baseline's merge_folders may predate direct_writes: it is given no such argument)
        options = {} if kind == "baseline" else {"direct_writes": kind == "merge"}
        report = merge_folders(Path(params["init"]), [Path(m) for m in params["members"]], Path(params["out"]),
                               granularity=params["granularity"], threads=threads, **options)
        doc = report.to_json()
        return {"seconds": time.perf_counter() - imported, "import_seconds": imported - started,
                "work_cpu": _cpu() - cpu, "threads": threads, "engine_seconds": doc["seconds"],
                "bytes_written": doc["bytes_written"], "input_bytes": doc["input_bytes"],
                "bytes_read": doc["bytes_read"], "angle_deg": doc["summary"]["angle_deg"]}
    raise ValueError(kind)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Measured:
    wall: float
    peak_rss: int  # bytes
    inner: dict[str, Any]
    cpu: float = 0.0  # user + system seconds of the child: what a shared, loaded machine distorts least


def baseline_tree(rev: str, root: Path) -> Path:
    """kwarp as of git revision `rev`, importable from the returned folder: the revision's files (git archive)
    with each folder placed where its pyproject's [tool.setuptools] package-dir maps it (merger/ ->
    kwarp/merger, ...)."""
    repo = Path(__file__).resolve().parent.parent
    src, tree = root / "src", root / "tree"
    shutil.rmtree(root, ignore_errors=True)
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", rev], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(src, filter="data")
    mapping = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(mapping.items()):  # "kwarp" first, then its mapped subpackages
        shutil.copytree(src / folder, tree / package.replace(".", "/"), dirs_exist_ok=True)
    return tree


def measure(kind: str, params: dict[str, Any], argv: list[str] | None = None, pythonpath: Path | None = None) -> Measured:
    """Run a child (this script in --child mode, or `argv`) and take its wall time and peak RSS; with
    `pythonpath`, that folder's kwarp is imported instead of this checkout's."""
    os.sync()  # earlier writes must not be flushed on this measurement's time
    env = {**os.environ, "PYTHONPATH": str(pythonpath)} if pythonpath is not None else None
    with tempfile.TemporaryFile("w+") as result:
        started = time.perf_counter()
        if argv is not None:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"{argv[0]} failed with exit code {os.waitstatus_to_exitcode(status)}")
            return Measured(time.perf_counter() - started, usage.ru_maxrss * 1024, {}, usage.ru_utime + usage.ru_stime)
        proc = subprocess.Popen([sys.executable, __file__, "--child", kind, json.dumps(params)], stdout=result, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"benchmark child '{kind}' failed with exit code {proc.returncode}")
        result.seek(0)
        inner = json.loads(result.read().strip().splitlines()[-1])
    return Measured(wall, usage.ru_maxrss * 1024, inner, usage.ru_utime + usage.ru_stime)


def _figures(merge: Measured, copy: Measured) -> dict[str, float]:
    """A merge child's figures and their ratios to the copy's."""
    return {"s": merge.wall, "work_s": merge.inner["seconds"], "cpu_s": merge.cpu, "work_cpu_s": merge.inner["work_cpu"],
            "work_cpu_ratio": merge.inner["work_cpu"] / copy.inner["work_cpu"], "time_ratio": merge.wall / copy.wall,
            "cpu_ratio": merge.cpu / copy.cpu, "rss_MiB": merge.peak_rss / 2**20}


def _round_ratios(rounds: list[dict[str, Measured]], kinds: list[str], against: str = "copy",
                  prefix: str = "rounds") -> dict[str, str]:
    """For each kind, the median and range over the rounds of its work's wall and CPU time over the `against`
    child's in the same round: on a shared machine, steadier than the ratio of the fastest children."""
    out = {}
    for kind in kinds:
        for key, figure in (("work", "seconds"), ("work_cpu", "work_cpu")):
            ratios = sorted(r[kind].inner[figure] / r[against].inner[figure] for r in rounds)
            out[f"{prefix}_{kind}_{key}"] = (f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"
                                           if len(ratios) > 1 else f"{ratios[0]:.2f}x")
    return out


def _wall_ratios(rounds: list[dict[str, Measured]], kind: str, against: str) -> str:
    """Median (range) over the rounds of a whole command's wall time over another's in the same round."""
    ratios = sorted(r[kind].wall / r[against].wall for r in rounds)
    return f"{statistics.median(ratios):.3f}x ({ratios[0]:.3f}-{ratios[-1]:.3f})"


def command_argv(inputs: list[str], out: Path, granularity: str, threads: int | None) -> list[str]:
    """`kwarp merge` in folder mode as a user runs it (-P: the repository root holds `operator/`)."""
    argv = [sys.executable, "-P", "-m", "kwarp", "merge", "--init", inputs[0]]
    for member in inputs[1:]:
        argv += ["--member", member]
    argv += ["--out", str(out), "--granularity", granularity]
    return argv + (["--threads", str(threads)] if threads else [])


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


DISK_PIECE = 8 << 20  # the merge writer's direct-I/O staging size (kwarp.merger.writer)


def disk_probe(folder: Path, size: int) -> dict[str, float] | None:
    """Seconds to write `size` bytes into a new file under `folder` by direct I/O in 8 MiB pieces, as the merge's
    writer does, then to fsync it, as the manifest's fsync makes the merge wait for the host's flush: the disk
    time a durable kwarp output carries and the copy and mergekit, which write into the page cache, do not.
    On a shared VM it moves by several times between minutes, so it is printed beside the ratios. None where
    the filesystem refuses direct I/O (the merge then writes through the page cache)."""
    import mmap

    path = folder / "disk-probe"
    buf = mmap.mmap(-1, DISK_PIECE)  # page-aligned, as O_DIRECT needs
    buf.write(b"\x5a" * DISK_PIECE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_DIRECT", 0), 0o644)
    except OSError:
        return None
    try:
        os.sync()
        started = time.perf_counter()
        for offset in range(0, size - size % DISK_PIECE, DISK_PIECE):
            os.pwrite(fd, buf, offset)
        written = time.perf_counter()
        os.fsync(fd)
        synced = time.perf_counter()
    except OSError:
        return None
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
        os.sync()
    n = size - size % DISK_PIECE
    return {"bytes": n, "write_s": written - started, "fsync_s": synced - written, "MBps": n / (written - started) / 1e6}


def _disk_line(probe: dict[str, float] | None) -> str:
    if probe is None:
        return "direct I/O refused here"
    return (f"{probe['bytes'] / 2**20:.0f} MiB by direct I/O in {probe['write_s']:.2f} s ({probe['MBps']:.0f} MB/s), "
            f"then fsync {probe['fsync_s']:.2f} s")


# ------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of one checkpoint (bf16), default 1.0")
    parser.add_argument("--shards", type=int, default=4, help="shards per input checkpoint, default 4")
    parser.add_argument("--members", type=int, nargs="+", default=[2, 4], help="values of M, default 2 4")
    parser.add_argument("--layers", type=int, default=8, help="transformer blocks, default 8")
    parser.add_argument("--granularity", default="layer", choices=["layer", "tensor", "model"])
    parser.add_argument("--threads", type=int, default=None,
                        help="worker threads of the merge (kwarp merge --threads; default as there)")
    parser.add_argument("--mergekit-yaml", default=None,
                        help="mergekit's CLI (e.g. from its own venv); default: mergekit-yaml on PATH, if any")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each case N times (in rounds, the order reversed every other round), keep the "
                             "fastest; the median of each round's merge/copy ratios is printed too")
    parser.add_argument("--out", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints and outputs")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run the merge of this git revision (an older engine) on the same files")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, params = args.child
        print(json.dumps(child(kind, json.loads(params))))
        return 0

    root = args.out or Path(tempfile.mkdtemp(prefix="kwarp-bench-merge-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        return run(root, args)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}")


def run(root: Path, args: argparse.Namespace) -> int:
    started = time.perf_counter()
    kept = [root / "inputs" / "init"] + [root / "inputs" / f"member-{m}" for m in range(max(args.members))]
    if all((f / "config.json").is_file() for f in kept):  # --out DIR --keep of an earlier run: same inputs
        init, members = kept[0], kept[1:]
    else:
        built = measure("build", {"root": str(root / "inputs"), "size_gb": args.size_gb, "shards": args.shards,
                                  "members": max(args.members), "layers": args.layers}).inner
        init, members = Path(built["init"]), [Path(m) for m in built["members"]]
    size = folder_bytes(init)
    print(f"built θ_init + {len(members)} members of {size / GB:.2f} GB ({len(list(init.glob('*.safetensors')))} "
          f"shards, bf16) in {time.perf_counter() - started:.0f} s under {root}; merge threads "
          f"{args.threads or 'default'}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    for leftover in root.glob("out-*"):  # of an interrupted run with --keep; removed before the idle child runs
        shutil.rmtree(leftover, ignore_errors=True)
    mergekit_yaml = args.mergekit_yaml or shutil.which("mergekit-yaml") or next(
        (str(p) for p in [Path(sys.executable).parent / "mergekit-yaml"] if p.exists()), None)
    baseline = baseline_tree(args.baseline, root / "baseline") if args.baseline else None
    idle = measure("idle", {})
    print(f"idle child (python + the merge process's imports): peak RSS {idle.peak_rss / 2**20:.0f} MiB")
    disk = {"before": disk_probe(root, size)}
    print(f"disk under the outputs, before the children: {_disk_line(disk['before'])}\n")
    rows = []
    for m in args.members:
        inputs = [str(init), *map(str, members[:m])]
        best: dict[str, Measured] = {}
        # Outputs stay until every child of this M has run: a child writing into memory that the deletion
        # of the previous child's output freed a moment before pays far less per page on a VM that reports
        # freed memory to its host (this project's: 0.11 against 0.25-1.3 CPU s per 480 MiB written), and
        # which child got that memory would depend on the order, not on the code.
        written: list[Path] = []
        with_mergekit = bool(mergekit_yaml) and m == 2  # nuslerp merges exactly two task vectors
        if with_mergekit:
            config = root / f"mergekit-{m}.yaml"
            config.write_text(json.dumps({
                "merge_method": "nuslerp", "base_model": inputs[0], "dtype": "bfloat16",
                "models": [{"model": p, "parameters": {"weight": 1.0}} for p in inputs[1:]],
            }))
        kinds = ["copy", "durable", "merge", "buffered", "command", *(["baseline"] if baseline else []),
                 *(["mergekit"] if with_mergekit else [])]
        rounds: list[dict[str, Measured]] = []
        for rep in range(args.repeat):
            rounds.append({})
            # Reversed every other round: on a shared machine a load that rises or falls during a round weighs
            # on each case alike over two rounds.
            for kind in kinds if rep % 2 == 0 else kinds[::-1]:
                out = root / f"out-{kind}-{m}-{rep}"
                written.append(out)
                if kind == "mergekit":
                    result = measure(kind, {}, [mergekit_yaml, str(config), str(out)])
                elif kind == "command":
                    result = measure(kind, {}, command_argv(inputs, out, args.granularity, args.threads))
                else:
                    params = {"inputs": inputs, "out": str(out)} if kind in ("copy", "durable") else {
                        "init": inputs[0], "members": inputs[1:], "out": str(out), "granularity": args.granularity,
                        "threads": args.threads}
                    result = measure(kind, params, pythonpath=baseline if kind == "baseline" else None)
                rounds[-1][kind] = result
                if kind not in best or result.wall < best[kind].wall:
                    best[kind] = result
        mergekit, command = best.get("mergekit"), best["command"]
        for out in written:
            shutil.rmtree(out, ignore_errors=True)
        disk[f"after M={m}"] = disk_probe(root, size)
        copy, durable, merge, buffered = best["copy"], best["durable"], best["merge"], best["buffered"]
        in_bytes = (m + 1) * size
        rows.append({
            "M": m,
            "input_GB": in_bytes / GB,
            "copy_s": copy.wall,
            "copy_GBps": (in_bytes + copy.inner["bytes_written"]) / copy.inner["seconds"] / GB,
            "merge_s": merge.wall,
            "merge_threads": merge.inner["threads"],
            "merge_engine_s": merge.inner["engine_seconds"],
            "merge_work_s": merge.inner["seconds"],
            "copy_work_s": copy.inner["seconds"],
            "work_ratio": merge.inner["seconds"] / copy.inner["seconds"],
            "merge_GBps": (in_bytes + merge.inner["bytes_written"]) / merge.inner["seconds"] / GB,
            "time_ratio": merge.wall / copy.wall,
            "copy_rss_MiB": copy.peak_rss / 2**20,
            "merge_rss_MiB": merge.peak_rss / 2**20,
            "merge_rss_extra_MiB": (merge.peak_rss - idle.peak_rss) / 2**20,
            "merge_vm_hwm_MiB": merge.inner["vm_hwm"] / 2**20,
            "copy_rss_extra_MiB": (copy.peak_rss - idle.peak_rss) / 2**20,
            "angle_mean_deg": (merge.inner["angle_deg"] or {}).get("mean"),
            "copy_cpu_s": copy.cpu,
            "merge_cpu_s": merge.cpu,
            "cpu_ratio": merge.cpu / copy.cpu,
            "copy_work_cpu_s": copy.inner["work_cpu"],
            "merge_work_cpu_s": merge.inner["work_cpu"],
            "work_cpu_ratio": merge.inner["work_cpu"] / copy.inner["work_cpu"],
            "buffered_s": buffered.wall,
            "buffered_work_s": buffered.inner["seconds"],
            "buffered_cpu_s": buffered.cpu,
            "buffered_work_cpu_s": buffered.inner["work_cpu"],
            "buffered_work_cpu_ratio": buffered.inner["work_cpu"] / copy.inner["work_cpu"],
            "buffered_rss_MiB": buffered.peak_rss / 2**20,
            **_round_ratios(rounds, [k for k in kinds if k not in ("copy", "command", "mergekit")]),
            "durable_work_s": durable.inner["seconds"],
            "durable_work_cpu_s": durable.inner["work_cpu"],
            "durable_work_ratio": merge.inner["seconds"] / durable.inner["seconds"],
            **_round_ratios(rounds, ["merge"], against="durable", prefix="vs_durable"),
            **({f"baseline_{k}": v for k, v in _figures(best["baseline"], copy).items()} if baseline else {}),
            "command_s": command.wall,
            "command_cpu_s": command.cpu,
            "command_rss_MiB": command.peak_rss / 2**20,
            "mergekit_cpu_s": mergekit.cpu if mergekit else None,
            "mergekit_s": mergekit.wall if mergekit else None,
            "mergekit_rss_MiB": mergekit.peak_rss / 2**20 if mergekit else None,
            # The goal's figure: the `kwarp merge` command over mergekit's command, fastest of each and, steadier
            # on a shared machine, each round's ratio; the benchmark's merge child beside them.
            "vs_mergekit": command.wall / mergekit.wall if mergekit else None,
            "vs_mergekit_cpu": command.cpu / mergekit.cpu if mergekit else None,
            "vs_mergekit_rounds": _wall_ratios(rounds, "command", "mergekit") if mergekit else None,
            "child_vs_mergekit": merge.wall / mergekit.wall if mergekit else None,
            # Interpreter start, imports and exit of the fastest children: their wall time less their work.
            "copy_startup_exit_s": copy.wall - copy.inner["seconds"],
            "merge_startup_exit_s": merge.wall - merge.inner["seconds"],
        })
    header = (f"{'M':>2} {'inputs GB':>9} {'copy s':>7} {'copy GB/s':>9} {'merge s':>7} {'engine s':>8} "
              f"{'merge GB/s':>10} {'merge/copy':>10} {'RSS copy':>9} {'RSS merge':>9} {'merge extra':>11}")
    print(header)
    for r in rows:
        print(f"{r['M']:>2} {r['input_GB']:>9.2f} {r['copy_work_s']:>7.2f} {r['copy_GBps']:>9.2f} "
              f"{r['merge_work_s']:>7.2f} {r['merge_engine_s']:>8.2f} {r['merge_GBps']:>10.2f} {r['work_ratio']:>9.2f}x "
              f"{r['copy_rss_MiB']:>6.0f}MiB {r['merge_rss_MiB']:>6.0f}MiB {r['merge_rss_extra_MiB']:>8.0f}MiB")
    print("\ncopy s / merge s: the work in the child after its imports (merge: `merge_folders`, manifest included; "
          "engine: without the manifest's hashing); GB/s = (input + output bytes) / those seconds; RSS: the "
          "child's peak, 'extra' over an idle child with the merge process's imports "
          f"({idle.peak_rss / 2**20:.0f} MiB). Wall-clock ratios including interpreter start: "
          + ", ".join(f"M={r['M']} {r['time_ratio']:.2f}x" for r in rows))
    print("CPU seconds of each child (user + system, imports included; on a loaded machine the least distorted "
          "measure): " + ", ".join(f"M={r['M']} copy {r['copy_cpu_s']:.2f} s, merge {r['merge_cpu_s']:.2f} s "
                                   f"({r['cpu_ratio']:.2f}x)" for r in rows))
    print("CPU seconds of the work after imports (the copy's imports are torch and safetensors.torch): "
          + ", ".join(f"M={r['M']} copy {r['copy_work_cpu_s']:.2f} s, merge {r['merge_work_cpu_s']:.2f} s "
                      f"({r['work_cpu_ratio']:.2f}x)" for r in rows))
    print("The same merge with buffered writes (direct_writes=False; the engine before direct I/O): "
          + ", ".join(f"M={r['M']} work {r['buffered_work_s']:.2f} s, work CPU {r['buffered_work_cpu_s']:.2f} s "
                      f"({r['buffered_work_cpu_ratio']:.2f}x copy), child {r['buffered_s']:.2f} s wall, "
                      f"{r['buffered_cpu_s']:.2f} s CPU, peak RSS {r['buffered_rss_MiB']:.0f} MiB" for r in rows))
    print("The copy with its output fsynced (durable: the floor of a merge whose output is on the disk when "
          "published; beside the goal's ratio, not in its place): " + ", ".join(
              f"M={r['M']} work {r['durable_work_s']:.2f} s, work CPU {r['durable_work_cpu_s']:.2f} s; merge work "
              f"over it, fastest {r['durable_work_ratio']:.2f}x, each round's median (range) "
              f"{r['vs_durable_merge_work']}" for r in rows))
    if args.repeat > 1:
        print(f"Each round's ratio to that round's copy, median (range) of {args.repeat} rounds: " + ", ".join(
            f"M={r['M']} " + "; ".join(f"{k} work {r[f'rounds_{k}_work']}, work CPU {r[f'rounds_{k}_work_cpu']}"
                                       for k in ("durable", "merge", "buffered", "baseline") if f"rounds_{k}_work" in r)
            for r in rows))
    if baseline:
        print(f"The same merge by kwarp {args.baseline} (the baseline): "
              + ", ".join(f"M={r['M']} work {r['baseline_work_s']:.2f} s, work CPU {r['baseline_work_cpu_s']:.2f} s "
                          f"({r['baseline_work_cpu_ratio']:.2f}x copy), child {r['baseline_s']:.2f} s wall "
                          f"({r['baseline_time_ratio']:.2f}x copy), {r['baseline_cpu_s']:.2f} s CPU "
                          f"({r['baseline_cpu_ratio']:.2f}x copy), peak RSS {r['baseline_rss_MiB']:.0f} MiB"
                          for r in rows))
    for r in rows:
        if r["mergekit_s"] is not None:
            print(f"M={r['M']}: mergekit nuslerp {r['mergekit_s']:.2f} s wall, {r['mergekit_cpu_s']:.2f} s CPU, peak RSS "
                  f"{r['mergekit_rss_MiB']:.0f} MiB; the `kwarp merge` command {r['command_s']:.2f} s wall, "
                  f"{r['command_cpu_s']:.2f} s CPU, {r['command_rss_MiB']:.0f} MiB: {r['vs_mergekit']:.3f}x mergekit's "
                  f"wall time (fastest of each), each round's {r['vs_mergekit_rounds']}, {r['vs_mergekit_cpu']:.3f}x its "
                  f"CPU time; the benchmark's merge child {r['merge_s']:.2f} s wall: {r['child_vs_mergekit']:.3f}x")
    print("Start-up and exit of the fastest children (wall less the work: interpreter, imports, exit): "
          + ", ".join(f"M={r['M']} copy {r['copy_startup_exit_s']:.2f} s, merge {r['merge_startup_exit_s']:.2f} s"
                      for r in rows))
    print("disk under the outputs, after each M's children: " + "; ".join(
        f"{k.removeprefix('after ')}: {_disk_line(v)}" for k, v in disk.items() if k != "before"))
    if not mergekit_yaml:
        print("mergekit: not installed (no mergekit-yaml on PATH or beside this Python; pass --mergekit-yaml), "
              "not measured")
    print(json.dumps({"size_bytes": size, "idle_rss_MiB": idle.peak_rss / 2**20, "disk": disk, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
