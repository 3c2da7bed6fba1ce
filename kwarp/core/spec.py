"""The WarpRun document: one typed model shared by the CRD, the operator, the local runner and every CLI.

Field names are camelCase in YAML (Kubernetes style) and snake_case in Python. A document is read
by its camelCase names only (`parse`): those are the names the CRD declares, and the API server
prunes any other spelling, so `learning_rate` in a document is an unknown field here too rather than
a setting that works with `kwarp run` and silently vanishes on a cluster. Python code may still
construct models by field name. Every model is frozen and forbids unknown fields, so a typo in a
document is an error that names the field rather than a silently ignored setting. Defaults are the paper's settings (docs/method.md);
the demo document overrides them for a CPU.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from .resources import ResourcesSpec
from .spec_model import SpecError, SpecModel, check_location

API_GROUP = "kwarp.dev"
API_VERSION = "v1alpha1"
KIND = "WarpRun"
PLURAL = "warpruns"

# Job names are "<run>-i<i>-m<m>" or "<run>-i<i>-merge" and a Job name feeds a pod label (63 chars).
MAX_RUN_NAME = 40
# A DNS-1123 label's characters (Kubernetes also caps a label at 63 characters: callers check the length).
# Use fullmatch: `match` with `$` also accepts a trailing newline.
DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class PolicySpec(SpecModel):
    """The SFT policy θ_sft: a Hugging Face causal LM folder (safetensors weights only)."""

    location: str = Field(description="Local path, file://, s3://bucket/key or hf://org/name of the SFT model")
    dtype: Dtype = Field(
        "auto", description="Training dtype; auto = bfloat16 on a GPU that supports it, else float32"
    )
    trust_remote_code: bool = Field(False, description="Run model code shipped with the weights (off by default)")
    revision: str | None = Field(None, description="Hub revision for hf:// locations")

    @field_validator("location")
    @classmethod
    def _location(cls, v: str) -> str:
        return check_location(v, "spec.policy.location")


class RewardSpec(SpecModel):
    """Either a sequence-classification reward model or a Python callable `module:function`."""

    # The document path used in messages; GoldRewardSpec, the same shape elsewhere, sets its own.
    _path: ClassVar[str] = "spec.reward"

    location: str | None = Field(None, description="Reward model location (AutoModelForSequenceClassification)")
    callable: str | None = Field(
        None, description="Python reward function 'module:function' taking (prompts, completions) -> list[float]"
    )
    dtype: Dtype = "auto"
    trust_remote_code: bool = False
    output_index: int = Field(0, ge=0, description="Which logit of the classifier is the reward")

    @model_validator(mode="after")
    def _one_source(self) -> RewardSpec:
        path = self._path
        if (self.location is None) == (self.callable is None):
            raise ValueError(f"{path}: give exactly one of 'location' (a model) or 'callable' (module:function)")
        if self.location is not None:
            check_location(self.location, f"{path}.location")
        if self.callable is not None and not _CALLABLE.match(self.callable):
            raise ValueError(f"{path}.callable must look like 'package.module:function', got '{self.callable}'")
        return self


class GoldRewardSpec(RewardSpec):
    """A held-out judge, measured beside the trained-on reward at every evaluated point, never optimised.

    The same two forms as spec.reward: a classifier folder (`location`) or `module:function`
    (`callable`). The paper's motivation is reward hacking: a policy can raise the reward model's
    score while a better judge's falls. With a gold reward every front point, member and training
    trajectory shows both, so the KL at which they part is visible.
    """

    _path: ClassVar[str] = "spec.evaluation.goldReward"


class DataSpec(SpecModel):
    """Prompt sets: JSONL files with one object per line holding the prompt text."""

    train: str = Field(description="Location of the training prompts (JSONL)")
    eval: str = Field(description="Location of the evaluation prompts (JSONL)")
    prompt_field: str = Field("prompt", min_length=1, description="Key of the prompt text in each JSONL object")

    @field_validator("train", "eval")
    @classmethod
    def _location(cls, v: str, info: Any) -> str:
        return check_location(v, f"spec.data.{info.field_name}")


class SlerpSpec(SpecModel):
    granularity: Literal["layer", "tensor", "model"] = Field(
        "layer", description="One SLERP angle per transformer block (layer), per tensor, or for the whole model"
    )
    lambda_: float | None = Field(
        None, alias="lambda", ge=0.0, le=1.0, description="Interpolation weight; default 1/M (0.5 for M=2)"
    )


class WarpSpec(SpecModel):
    iterations: int = Field(3, ge=1, le=100, description="Number of WARP iterations I")
    policies: int = Field(2, ge=1, le=64, description="Policies M trained per iteration and merged by SLERP")
    steps: int | list[int] = Field(
        [9000, 7000, 7000, 5000],
        description="REINFORCE steps T per iteration; a list gives T for iterations 1, 2, ... and its last value repeats "
        "(the paper: 9k, 7k, 7k, then 5k)",
    )
    beta: float = Field(0.1, ge=0.0, description="KL penalty coefficient β")
    ema_rate: float = Field(0.01, ge=0.0, le=1.0, description="EMA update rate μ of the anchor")
    anchor: Literal["ema", "sft", "none"] = Field(
        "ema", description="KL anchor: ema (WARP), sft (the iteration's initial policy), none"
    )
    slerp: SlerpSpec = SlerpSpec()
    liti_eta: float = Field(0.3, ge=0.0, le=1.0, description="LiTI η: next init = (1-η)·θ_init + η·θ_slerp")

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: int | list[int]) -> int | list[int]:
        values = [v] if isinstance(v, int) else v
        if not values:
            raise ValueError("spec.warp.steps: give a positive integer or a non-empty list of them")
        for s in values:
            if s < 1:
                raise ValueError(f"spec.warp.steps: every value must be >= 1, got {s}")
        return v

    def steps_for(self, iteration: int) -> int:
        """T for a 0-based iteration."""
        if isinstance(self.steps, int):
            return self.steps
        return self.steps[min(iteration, len(self.steps) - 1)]

    @property
    def slerp_lambda(self) -> float:
        return self.slerp.lambda_ if self.slerp.lambda_ is not None else 1.0 / self.policies


class TrainingSpec(SpecModel):
    batch_size: int = Field(128, ge=1, description="Prompts per optimiser step")
    samples_per_prompt: int = Field(2, ge=1, description="Completions sampled per prompt (k)")
    micro_batch_size: int | None = Field(
        None, ge=1, description="Prompts per forward/backward pass (gradient accumulation); default = batchSize"
    )
    baseline: Literal["leave-one-out", "none"] = Field(
        "leave-one-out", description="REINFORCE baseline over the k samples of a prompt"
    )
    learning_rate: float = Field(1e-6, gt=0.0, description="Adam learning rate")
    warmup_steps: int = Field(100, ge=0, description="Linear learning-rate warm-up")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Gradient clipping; null disables")
    max_prompt_tokens: int = Field(256, ge=1, description="Prompts are truncated to this many tokens (left)")
    max_new_tokens: int = Field(64, ge=1, description="Completion length cap")
    temperature: float = Field(0.9, gt=0.0, description="Sampling temperature")
    generation: Literal["auto", "plain", "compiled"] = Field(
        "auto",
        description="How completions are drawn (always plain temperature sampling): plain = transformers' generate; "
        "compiled = kwarp's decode loop with a static KV cache under torch.compile; auto = compiled on a GPU, "
        "kwarp's decode loop without compilation on a CPU",
    )
    seed: int = Field(0, ge=0, description="Base seed; member m of iteration i uses a seed derived from it")
    checkpoint_interval: int = Field(100, ge=1, description="Save resumable state every N steps")
    kl_to_init: bool = Field(True, description="Also log KL to θ_init (needs a third copy of the weights)")
    max_non_finite_steps: int = Field(
        10,
        ge=1,
        description="A step whose loss or gradient is not finite (nan/inf) is skipped (no optimiser or EMA update); "
        "this many skipped in a row fail the member",
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="How a member's processes share the work: ddp (every GPU holds the whole policy, Adam and EMA) "
        "or fsdp (policy, gradients, Adam, EMA and reference models sharded over the member's processes; "
        "`kwarp plan-resources` shows the memory of each)",
    )

    @model_validator(mode="after")
    def _micro(self) -> TrainingSpec:
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"spec.training.microBatchSize ({self.micro_batch_size}) must divide "
                f"spec.training.batchSize ({self.batch_size})"
            )
        if self.baseline == "leave-one-out" and self.samples_per_prompt < 2:
            raise ValueError(
                "spec.training.samplesPerPrompt must be >= 2 with baseline 'leave-one-out' "
                "(or set spec.training.baseline: none)"
            )
        return self


class EvaluationSpec(SpecModel):
    etas: list[float] = Field(
        [0.0, 0.1, 0.3, 0.5, 0.8, 1.0], description="LiTI η grid evaluated to trace the Pareto front"
    )
    prompts: int = Field(256, ge=1, description="Evaluation prompts used (first N of the eval set)")
    samples_per_prompt: int = Field(1, ge=1)
    max_new_tokens: int | None = Field(None, ge=1, description="Default: spec.training.maxNewTokens")
    temperature: float | None = Field(None, gt=0.0, description="Default: spec.training.temperature")
    batch_size: int = Field(32, ge=1, description="Prompts per generation batch")
    every: int = Field(
        0,
        ge=0,
        description="Trainers also evaluate reward and KL to the SFT policy on eval prompts every N steps "
        "(the training trajectories in the KL-reward plane); 0 turns it off",
    )
    trajectory_prompts: int | None = Field(
        None, ge=1, description="Eval prompts used by those trajectory evaluations (default: evaluation.prompts)"
    )
    gold_reward: GoldRewardSpec | None = Field(
        None,
        description="A held-out judge (model location or 'module:function') scored beside spec.reward at every "
        "evaluated point (fronts, members, trajectories) and never trained on; shows where reward hacking starts",
    )

    @field_validator("etas")
    @classmethod
    def _etas(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("spec.evaluation.etas must list at least one η in [0, 1]")
        for eta in v:
            if not 0.0 <= eta <= 1.0:
                raise ValueError(f"spec.evaluation.etas: every η must lie in [0, 1], got {eta}")
        if len(set(v)) != len(v):
            raise ValueError("spec.evaluation.etas must not repeat a value")
        return sorted(v)


class StorageSpec(SpecModel):
    url: str = Field(
        "kwarp-runs",
        description="Checkpoint root: s3://bucket/prefix (required on Kubernetes), a local path or file:///abs/path; "
        "a relative path is relative to the document's folder",
    )
    endpoint: str | None = Field(None, description="S3 endpoint host[:port] (MinIO); env KWARP_S3_ENDPOINT otherwise")
    secure: bool = Field(True, description="Use TLS for the S3 endpoint")
    region: str | None = None
    secret_name: str | None = Field(
        None,
        description="Kubernetes Secret holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (operator mode)",
    )

    @model_validator(mode="after")
    def _scheme(self) -> StorageSpec:
        if "://" in self.url and not self.url.startswith(("file://", "s3://")):
            raise ValueError(f"spec.storage.url must be a path, file:// or s3://, got '{self.url}'")
        if self.url.startswith("s3://"):
            bucket = self.url[len("s3://") :].split("/", 1)[0]
            if not bucket:
                raise ValueError("spec.storage.url: s3:// URLs need a bucket, as in s3://bucket/prefix")
        elif self.secret_name or self.endpoint:
            raise ValueError("spec.storage.endpoint and spec.storage.secretName apply only to s3:// URLs")
        return self

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")


class ExportSpec(SpecModel):
    """The deliverable: once the last front is evaluated, one policy on it is written (`kwarp export`) as a
    Hugging Face folder with a model card, its reward and KL measured, its location in status.export."""

    kl_budget: float | None = Field(
        None, ge=0.0, description="Export the policy with the most reward whose KL to the SFT policy is at most this"
    )
    eta: float | None = Field(None, ge=0.0, le=1.0, description="Export the policy at this LiTI η instead")
    to: str | None = Field(
        None,
        description="Where: s3://bucket/key (in a cluster: under the operator's guardrails.exportPrefixes), or a "
        "local path (embedded runs); default: export/ in the run's own folder of the store",
    )

    @model_validator(mode="after")
    def _one_choice(self) -> ExportSpec:
        if (self.kl_budget is None) == (self.eta is None):
            raise ValueError("spec.export: give exactly one of 'klBudget' (a KL budget) or 'eta' (a LiTI η)")
        if self.to is not None:
            check_location(self.to, "spec.export.to")
            if self.to.startswith("hf://"):
                raise ValueError("spec.export.to: kwarp writes to a path or s3://bucket/key, not to hf://")
            if self.to.startswith("s3://") and self.to[len("s3://") :].strip("/").count("/") < 1:
                raise ValueError(f"spec.export.to: give s3://bucket/key (a key under the bucket), got '{self.to}'")
        return self


class FailurePolicy(SpecModel):
    max_retries: int = Field(2, ge=0, le=100, description="Times a failed trainer, merge or evaluation is retried")
    progress_deadline_seconds: int | None = Field(
        None,
        ge=1,
        description="Fail a running trainer Job (a failed attempt, retried like any other) when its member has "
        "completed no step for this long, judged from the heartbeat the trainer writes to the store; cover "
        "model loading and the slowest step with its evaluation. Unset: no progress watchdog",
    )


class WarpRunSpec(SpecModel):
    policy: PolicySpec
    reward: RewardSpec
    data: DataSpec
    warp: WarpSpec = WarpSpec()
    training: TrainingSpec = TrainingSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    storage: StorageSpec = StorageSpec()
    resources: ResourcesSpec = ResourcesSpec()
    suspend: bool = Field(False, description="Pause the run: running Jobs are suspended, nothing new starts")
    queue_name: str | None = Field(
        None,
        max_length=63,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$",
        description="Kueue LocalQueue of the run's Jobs (label kueue.x-k8s.io/queue-name; they are created "
        "suspended and start when Kueue admits them; an iteration's members, with all their nodes, are one "
        "Indexed Job, admitted together). Default: the operator's (chart value kueue.queueName)",
    )
    failure_policy: FailurePolicy = FailurePolicy()
    cleanup: Literal["Retain", "Delete"] = Field(
        "Retain", description="Delete: remove the run's checkpoints from the store when the WarpRun is deleted"
    )
    export: ExportSpec | None = Field(
        None, description="After the last evaluation, export one policy of the final front (kwarp export)"
    )


class Metadata(BaseModel):
    """Kubernetes object metadata: only the name is checked; the API server's own fields pass through."""

    model_config = ConfigDict(frozen=True, extra="allow")
    name: str
    namespace: str | None = None
    # The run's identity: the API server's uid, or the one the embedded runner recorded. Executors put it
    # into the document each task receives; it keys the run's folder in the store (kwarp.core.ownership).
    uid: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if len(v) > MAX_RUN_NAME or not DNS_1123_LABEL.fullmatch(v):
            raise ValueError(
                f"metadata.name '{v}' must be a DNS-1123 label of at most {MAX_RUN_NAME} characters "
                "(lower-case letters, digits and '-', starting and ending alphanumeric)"
            )
        return v


class WarpRun(SpecModel):
    api_version: Literal["kwarp.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["WarpRun"]
    metadata: Metadata
    spec: WarpRunSpec
    status: Annotated[dict[str, Any] | None, Field(None, exclude=True)] = None

    @property
    def name(self) -> str:
        return self.metadata.name

    def to_document(self) -> dict[str, Any]:
        """The document as plain JSON-able data with camelCase keys (status left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"status"})


def _yaml_names() -> dict[str, str]:
    """Python field name -> document name, for every field whose two spellings differ (lambda_ -> lambda)."""
    out: dict[str, str] = {}
    for model in SpecModel.__subclasses__():
        for name, info in model.model_fields.items():
            if info.alias and info.alias != name:
                out[name] = info.alias
    return out


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid WarpRun ({err.error_count()} problem{'s' if err.error_count() > 1 else ''})"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            name = str(e["loc"][-1]) if e["loc"] else ""
            camel = _yaml_names().get(name, to_camel(name))
            hint = f"did you mean '{camel}'? " if camel != name else "check the spelling; "
            msg = f"unknown field ({hint}fields are camelCase)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "literal_error":
            msg = msg.replace("Input should be", "must be one of:")
        lines.append(f"  - {loc}: {msg}" if loc else f"  - {msg}")
    return "\n".join(lines)


def parse(data: Mapping[str, Any], source: str = "WarpRun") -> WarpRun:
    """Validate a document; raise SpecError naming every bad field."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{source}: a WarpRun document must be a mapping, got {type(data).__name__}")
    try:
        # by_name=False: only the CRD's spelling, whatever the models' populate_by_name allows in Python.
        # strict: no coercion the API server would refuse ("3" for an integer, "yes" for a boolean).
        return WarpRun.model_validate(dict(data), by_alias=True, by_name=False, strict=True)
    except ValidationError as err:
        raise SpecError(_format_errors(err, source)) from None


class _Loader(yaml.SafeLoader):
    """YAML as kubectl reads it: `1e-5` is a number (PyYAML's YAML 1.1 float needs a dot, so it would be a
    string, which the strict parse then refuses while `kubectl apply` sends a number)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)$"),
    list("-+.0123456789"),
)


def load(path: str | Path) -> WarpRun:
    """Read a YAML (or JSON) file holding one WarpRun. Relative local locations resolve against its folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(f"{path}: cannot read the WarpRun document ({err.strerror})") from None
    try:
        docs = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    runs = [d for d in docs if isinstance(d, Mapping) and d.get("kind") == KIND]
    if len(runs) != 1:
        raise SpecError(f"{path}: expected exactly one document of kind WarpRun, found {len(runs)}")
    return resolve_relative(parse(runs[0], source=str(path)), path.parent)


def _resolve(location: str, base: Path) -> str:
    if "://" in location or Path(location).is_absolute():
        return location
    return str((base / location).resolve())


def resolve_relative(run: WarpRun, base: Path) -> WarpRun:
    """Make relative local paths in the spec absolute, relative to the document's folder."""
    s = run.spec
    policy = s.policy.model_copy(update={"location": _resolve(s.policy.location, base)})
    reward = s.reward
    if reward.location is not None:
        reward = reward.model_copy(update={"location": _resolve(reward.location, base)})
    data = s.data.model_copy(update={"train": _resolve(s.data.train, base), "eval": _resolve(s.data.eval, base)})
    storage = s.storage.model_copy(update={"url": _resolve(s.storage.url, base)})
    evaluation = s.evaluation
    gold = evaluation.gold_reward
    if gold is not None and gold.location is not None:
        gold = gold.model_copy(update={"location": _resolve(gold.location, base)})
        evaluation = evaluation.model_copy(update={"gold_reward": gold})
    export = s.export
    if export is not None and export.to is not None:
        export = export.model_copy(update={"to": _resolve(export.to, base)})
    spec = s.model_copy(
        update={"policy": policy, "reward": reward, "data": data, "storage": storage, "evaluation": evaluation,
                "export": export}
    )
    return run.model_copy(update={"spec": spec})


def member_seed(spec: WarpRunSpec, iteration: int, member: int) -> int:
    """Members of one iteration differ only by their seed (the paper varies the prompt order)."""
    return spec.training.seed + 1000 * iteration + member


SPEC_ENV = "KWARP_SPEC"
# The member a pod of a gang Job trains (its completion index): `kwarp train` without --member reads it.
MEMBER_ENV = "KWARP_MEMBER"


def from_cli(path: str | None) -> WarpRun:
    """The WarpRun of a task command: from --spec FILE, else from $KWARP_SPEC (the document as JSON)."""
    import json
    import os

    if path:
        return load(path)
    raw = os.environ.get(SPEC_ENV)
    if not raw:
        raise SpecError(f"no WarpRun given: pass --spec FILE or set {SPEC_ENV} to the document as JSON")
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise SpecError(f"{SPEC_ENV} is not valid JSON: {err}") from None
    return parse(data, source=SPEC_ENV)


# Fields of a running run that may change: they alter no result, only how (or whether) work proceeds.
SAFE_TO_CHANGE = ("suspend", "failure_policy", "cleanup", "resources", "queue_name")


def changed_fields(old: WarpRunSpec, new: WarpRunSpec, ignore: tuple[str, ...] = SAFE_TO_CHANGE) -> list[str]:
    """camelCase paths (spec.<field>) of top-level spec fields that differ, outside `ignore`."""
    out = []
    for name, info in WarpRunSpec.model_fields.items():
        if name in ignore:
            continue
        if getattr(old, name) != getattr(new, name):
            out.append(f"spec.{info.alias or name}")
    return out


def unsafe_changes(old: WarpRunSpec, new: WarpRunSpec) -> list[str]:
    """What a running run's spec may not change: every field outside SAFE_TO_CHANGE, and within `resources`
    each role's image (an image is code: a new one mid-run would change results, like a new reward)."""
    images = [f"spec.resources.{role}.image" for role in ("trainer", "merger", "evaluation")
              if getattr(old.resources, role).image != getattr(new.resources, role).image]  # fmt: skip
    return changed_fields(old, new) + images


def keep_images(accepted: WarpRunSpec, new: ResourcesSpec) -> ResourcesSpec:
    """`new` resources with each role's image as accepted (the safe part of a refused change)."""
    return new.model_copy(update={role: getattr(new, role).model_copy(update={"image": getattr(accepted.resources, role).image})
                                  for role in ("trainer", "merger", "evaluation")})  # fmt: skip
