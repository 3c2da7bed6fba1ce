"""The memory model of a trainer process (kwarp.core.memory) and `kwarp plan-resources`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kwarp.cli import main as kwarp_main
from kwarp.core.memory import SHAPES, ModelShape, TrainerLoad, fits, memory_per_gpu, parse_quantity
from tests.models import tiny_gpt2

# ------------------------------------------------------------------------------ parameter counts


@pytest.mark.parametrize(
    ("name", "params"),
    [("gemma-2b", 2_506_172_416), ("gemma-7b", 8_537_680_896), ("llama-2-70b", 68_976_648_192)],
)
def test_published_shapes_count_the_published_parameters(name: str, params: int) -> None:
    assert ModelShape.from_config(SHAPES[name]).params == params


def _hf_model(kind: str) -> Any:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if kind == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=3, n_embd=32, n_head=4, n_positions=48, vocab_size=100))
    if kind == "gpt2-untied-wide":
        return tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=16, vocab_size=90,
                                                n_inner=48, tie_word_embeddings=False))  # fmt: skip
    if kind == "llama-gqa-bias":
        return tf.LlamaForCausalLM(tf.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=80,
                                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=120,
                                                  attention_bias=True, tie_word_embeddings=False))  # fmt: skip
    if kind == "gemma":
        return tf.GemmaForCausalLM(tf.GemmaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=96,
                                                  num_attention_heads=2, num_key_value_heads=1, head_dim=24,
                                                  vocab_size=150))  # fmt: skip
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["gpt2", "gpt2-untied-wide", "llama-gqa-bias", "gemma"])
def test_shape_counts_what_transformers_builds(kind: str) -> None:
    """Parameters (tied weights once) and one block's parameters, against real Hugging Face models."""
    model = _hf_model(kind)
    shape = ModelShape.from_config(model.config.to_dict())
    assert shape.params == sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    block = model.transformer.h[0] if kind.startswith("gpt2") else model.model.layers[0]
    assert shape.layer_params == sum(p.numel() for p in block.parameters())


# ------------------------------------------------------------------------------ bytes per GPU

# A shape small enough to check by hand: P = 2 x 656 + 136 = 1448 parameters.
#   block: attention 8·8 + 2·8·8 + 8·8 = 256, gated MLP 3·8·16 = 384, two RMSNorms 16  -> 656
#   root:  tied embedding 16·8 + final norm 8                                            -> 136
SMALL = ModelShape(layers=2, hidden=8, vocab=16, heads=2, kv_heads=2, head_dim=4, intermediate=16, tied=True, gated=True)
# bf16, 2 processes, 4 prompts x 2 samples: 2 prompts (4 rows) per process; 6 + 2 tokens.
#   activations: 4 rows · 8 tokens · 2 layers · (2·(32 + 16 + 16 + 64) + 64 = 320) = 20480
#                + logits 4 · 3 · 16 · (2 + 8) = 1920                          = 22400
#   KV cache:    2 prompts · 2 samples · 2 · 2 layers · 8 · 8 tokens · 2 bytes  = 2048 (smaller)
LOAD = TrainerLoad(compute_bytes=2, processes=2, batch_size=4, samples_per_prompt=2, micro_batch_size=None,
                   max_prompt_tokens=6, max_new_tokens=2, anchor="ema", kl_to_init=True)  # fmt: skip


@pytest.mark.parametrize(
    ("strategy", "changes", "expected"),
    [
        pytest.param("ddp", {}, dict(policy=5792, gradients=5792, adam=11584, ema=5792, anchor=0, init=2896, reward=0,
                                     buffers=4 * 1448 + 2 * 1448, activations=22400, total=62944), id="ddp-ema"),
        # FSDP: every state over 2; buffers = root gathered 2·136 + two blocks 2·2·656 + one unsharded fp32 grad 4·656
        pytest.param("fsdp", {}, dict(policy=2896, gradients=2896, adam=5792, ema=2896, anchor=0, init=1448, reward=0,
                                      buffers=272 + 2624 + 2624, activations=22400, total=43848), id="fsdp-ema"),
        # anchor = sft: the anchor is θ_init (one bf16 copy) and the KL to init reuses it.
        pytest.param("fsdp", {"anchor": "sft"}, dict(policy=2896, gradients=2896, adam=5792, ema=2896, anchor=1448,
                                                     init=0, reward=0, buffers=5520, activations=22400, total=43848),
                     id="fsdp-sft"),
        # float32 compute: no autocast weight cache in DDP's buffers; a reward model of 1000 parameters.
        pytest.param("ddp", {"compute_bytes": 4, "kl_to_init": False, "reward_params": 1000},
                     dict(policy=5792, gradients=5792, adam=11584, ema=5792, anchor=0, init=0, reward=4000,
                          buffers=5792, activations=4 * 8 * 2 * (4 * 128 + 64) + 4 * 3 * 16 * 12,
                          total=5792 * 3 + 11584 + 4000 + 5792 + 4 * 8 * 2 * 576 + 2304), id="ddp-fp32"),
        # One prompt per micro-batch: 2 rows; then generation's KV cache of 4 rows... is still smaller.
        pytest.param("ddp", {"micro_batch_size": 1, "anchor": "none", "kl_to_init": False},
                     dict(policy=5792, gradients=5792, adam=11584, ema=5792, anchor=0, init=0, reward=0,
                          buffers=8688, activations=11200, total=5792 * 3 + 11584 + 8688 + 11200), id="ddp-micro"),
    ],
)
def test_memory_per_gpu(strategy: str, changes: dict[str, Any], expected: dict[str, int]) -> None:
    import dataclasses

    assert memory_per_gpu(SMALL, dataclasses.replace(LOAD, **changes), strategy) == expected  # type: ignore[arg-type]


def test_long_generations_are_bounded_by_the_kv_cache() -> None:
    """Generation holds the KV cache of all of a process's rows; training only one micro-batch's activations."""
    import dataclasses

    load = dataclasses.replace(LOAD, batch_size=64, micro_batch_size=1, max_prompt_tokens=500, max_new_tokens=12)
    rows = memory_per_gpu(SMALL, load, "fsdp")
    assert rows["activations"] == 32 * 2 * 2 * 2 * 8 * 512 * 2  # prompts x k x (K, V) x layers x kv_dim x tokens x c


@pytest.mark.parametrize(("text", "value"), [("80Gi", 80 * 2**30), ("141G", 141 * 10**9), ("1024", 1024), ("1.5Ki", 1536)])
def test_parse_quantity(text: str, value: int) -> None:
    assert parse_quantity(text) == value


def test_fits_leaves_a_tenth_for_the_runtime() -> None:
    assert fits(90, 100) and not fits(91, 100)


# ------------------------------------------------------------------------------ the command


def _doc(tmp_path: Path, policy: Path | str, trainer: dict[str, Any] | None = None, **training: Any) -> Path:
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "hi"}\n')
    doc = {
        "apiVersion": "kwarp.dev/v1alpha1", "kind": "WarpRun", "metadata": {"name": "m"},
        "spec": {"policy": {"location": str(policy), "dtype": "bfloat16"}, "reward": {"callable": "a.b:c"},
                 "data": {"train": str(data), "eval": str(data)}, "storage": {"url": str(tmp_path / "store")},
                 "training": {"batchSize": 8, "samplesPerPrompt": 2, **training},
                 "resources": {"trainer": {"gpus": 2, **(trainer or {})}}},
    }  # fmt: skip
    path = tmp_path / "warprun.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_plan_resources_reads_a_local_policy_and_says_what_fits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tiny_gpt2(tmp_path / "sft")
    doc = _doc(tmp_path, policy, maxPromptTokens=32, maxNewTokens=8)
    assert kwarp_main(["plan-resources", str(doc), "-o", "json", "--nodes", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    shape = ModelShape.from_config(json.loads((policy / "config.json").read_text()))
    load = TrainerLoad(compute_bytes=2, processes=4, batch_size=8, samples_per_prompt=2, micro_batch_size=None,
                       max_prompt_tokens=32, max_new_tokens=8, anchor="ema", kl_to_init=True)  # fmt: skip
    assert out["params"] == shape.params and out["processes"] == 4
    assert out["perGpu"] == {s: memory_per_gpu(shape, load, s) for s in ("ddp", "fsdp")}
    assert out["fits"] == {"ddp": True, "fsdp": True}

    assert kwarp_main(["plan-resources", str(doc), "--gpu-memory", "1Mi"]) == 0
    text = capsys.readouterr().out
    assert "ddp:" in text and "DOES NOT FIT" in text and "anchor ema" in text
    for row in ("policy", "gradients", "adam", "ema", "anchor", "init", "reward", "buffers", "activations", "total"):
        assert any(line.split()[:1] == [row] for line in text.splitlines()), row


def test_plan_resources_asks_for_a_config_when_the_policy_is_remote(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path, "s3://bucket/models/x")
    assert kwarp_main(["plan-resources", str(doc)]) == 2
    assert "pass --config or --shape" in capsys.readouterr().err
    assert kwarp_main(["plan-resources", str(doc), "--shape", "gemma-2b"]) == 0
    assert "2.51B parameters" in capsys.readouterr().out


def test_plan_resources_sizes_the_spec_own_nodes_and_strategy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The member's node count comes from resources.trainer.nodes; the spec's strategy is the one judged."""
    policy = tiny_gpt2(tmp_path / "sft")
    doc = _doc(tmp_path, policy, trainer={"nodes": 4}, strategy="fsdp")
    assert kwarp_main(["plan-resources", str(doc), "-o", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["processes"] == 8 and out["strategy"] == "fsdp"  # 4 nodes x 2 GPUs
    fsdp, ddp = out["perGpu"]["fsdp"]["total"], out["perGpu"]["ddp"]["total"]
    # Between the two totals, so that fsdp fits and ddp does not.
    between = (fsdp + ddp) // 2
    assert kwarp_main(["plan-resources", str(doc), "--gpu-memory", str(int(between / 0.9))]) == 0
    text = capsys.readouterr().out
    assert "<- spec.training.strategy" in text.splitlines()[-1] and "warning" not in text
    doc = _doc(tmp_path, policy, trainer={"nodes": 4}, strategy="ddp")
    assert kwarp_main(["plan-resources", str(doc), "--gpu-memory", str(int(between / 0.9))]) == 0
    text = capsys.readouterr().out
    assert "warning: spec.training.strategy ddp does not fit; fsdp would fit" in text
