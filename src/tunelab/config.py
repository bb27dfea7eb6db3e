"""The run configuration: one YAML file validated into frozen, typed pydantic sections.

Independent axes: `model` x `tuning` x `method` x `data` x `train` x `eval` x `output`. Every field carries a
one-line description (it becomes `tunelab config-schema` and docs/config-reference.md). Unknown keys are
errors with a "did you mean" hint and the YAML line they are on. Overrides `a.b=c` are applied to the raw
mapping before validation, so the resolved config that is saved with a run is exactly what ran.
Every YAML the project reads goes through `yamlio.safe_load`: a key given twice in one mapping is an error
naming both lines. Numbers must be finite (`.inf`, `.nan` and overflowing literals such as `1e400` are
refused), and those whose absurd values crash or silently ruin a run (lr, epochs, steps, lengths, batch
sizes) have upper bounds far beyond any real use.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunelab.errors import ConfigError, DataError
from tunelab.textio import MAX_RECORD_BYTES, codec_name, read_text
from tunelab.yamlio import DuplicateKeyError, safe_load

FORMAT_NAMES = (
    "auto", "alpaca", "messages", "sharegpt", "prompt_completion", "text", "preference", "transcript", "kto", "prompt",
    "labelled", "token_tags",
)  # fmt: skip
READER_NAMES = ("auto", "jsonl", "json", "csv", "parquet", "conll")  # how a file is read (tunelab.data.sources)


MAX_TOKENS = 1 << 22  # 4M tokens: past any model's context
MAX_STEPS = 10**9


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=False, allow_inf_nan=False)


METRIC_NAMES = (
    "loss", "perplexity", "exact_match", "f1", "rouge", "bleu", "chrf", "json", "classification", "judge", "reward",
)  # fmt: skip


def check_metric_name(m: str | MetricSpec) -> None:
    if isinstance(m, str) and m not in METRIC_NAMES:
        close = difflib.get_close_matches(m, METRIC_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; expected one of: {', '.join(METRIC_NAMES)}"
        raise ValueError(f"unknown metric {m!r}{hint}")


def metric_specs(metrics: list[str | MetricSpec]) -> list[MetricSpec]:
    """Every metric entry as a MetricSpec (plain names get no options)."""
    return [m if isinstance(m, MetricSpec) else MetricSpec(name=m) for m in metrics]


class MetricSpec(Section):
    name: Literal[METRIC_NAMES] = Field(description="Metric name (see tunelab.scoring.metrics.METRICS).")  # type: ignore[valid-type]
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword options of the metric, e.g. {normalize: squad} for exact_match."
    )


PII_KINDS = ("email", "phone", "card", "iban", "ip", "secret", "address", "name")  # what tunelab.quality.pii finds


class CheckOptions(Section):
    """Settings for `tunelab data check` and the pre-flight check before training (data.check)."""

    near_duplicates: bool = Field(True, description="Look for near-duplicates and near leakage (MinHash/LSH).")
    near_threshold: float = Field(
        0.85,
        gt=0,
        le=1,
        description="Jaccard similarity of character 5-grams at which two records are near-duplicates.",
    )
    pii: bool = Field(True, description="Scan text fields for PII and secrets.")
    pii_kinds: list[str] = Field(default_factory=lambda: list(PII_KINDS), description="PII kinds to scan for.")
    pii_ner: bool = Field(
        False, description="Also find names and places with Presidio's NER (needs presidio-analyzer and a spaCy model)."
    )
    tokenizer: str | None = Field(
        None,
        description="Tokenizer (preset name, local folder or hub id) for token lengths; none: characters.",
    )
    max_length: int | None = Field(None, ge=1, description="Report records longer than this (tokens or characters).")
    label_column: str | None = Field(
        None,
        description="Classification label column; default: label, category, intent or class when present.",
    )
    strict: bool = Field(False, description="Treat warnings as errors (exit status and pre-flight).")
    leakage: Literal["error", "drop", "warn"] = Field(
        "error",
        description="Eval/test records whose input is in train: stop (error), leave them out of the run and list "
        "them in the data card (drop), or only warn.",
    )
    min_label_count: int = Field(5, ge=1, description="Warn about classes with fewer training examples than this.")
    max_label_imbalance: float = Field(
        20.0, ge=1, description="Warn when the largest class has more than this many times the smallest's examples."
    )
    workers: int = Field(1, ge=1, description="Processes that compute near-duplicate signatures (same result).")
    backend: Literal["local", "ray"] = Field(
        "local", description="Where near-duplicate signatures are computed: local processes, or Ray Data."
    )


class ModelConfig(Section):
    name_or_path: str = Field(
        "tiny", description="A preset name (tiny, tiny-1m, tiny-4m, tiny-30m), a local folder or a hub id."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when loading from the hub.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; auto is bf16 on a capable GPU and fp32 on CPU."
    )
    trust_remote_code: bool = Field(
        False, description="Run model code shipped with a hub repo (off: only built-in code)."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel; sdpa works everywhere, flash_attention_2 needs a CUDA GPU."
    )
    chat_template: str | None = Field(
        None,
        description="Override the chat template: 'fallback', a Jinja string, or a path to a .jinja file.",
    )
    seed: int = Field(
        0, description="Seed for initializing preset models (presets are built from config, not downloaded)."
    )


class LoraSettings(Section):
    r: int = Field(16, ge=1, le=65536, description="LoRA rank.")
    alpha: float = Field(
        32, gt=0, description="LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rslora)."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names to adapt, or all-linear (every linear layer but the output head).",
    )
    rslora: bool = Field(False, description="Rank-stabilized LoRA scaling alpha / sqrt(r).")


class FreezeSettings(Section):
    trainable_layers: int = Field(2, ge=0, description="Train only the last N transformer blocks.")
    train_embeddings: bool = Field(False, description="Also train the input embeddings.")
    train_head: bool = Field(False, description="Also train the output head (lm_head).")


class TuningConfig(Section):
    mode: Literal["full", "freeze", "lora", "dora", "qlora", "prefix", "prompt", "ia3"] = Field(
        "lora",
        description="Which parameters train: full, freeze (last N blocks), lora, dora, qlora, prefix, prompt, ia3.",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Settings for lora, dora and qlora.")
    freeze: FreezeSettings = Field(default_factory=FreezeSettings, description="Settings for freeze.")
    num_virtual_tokens: int = Field(16, ge=1, le=65536, description="Virtual tokens for prefix and prompt tuning.")
    ia3_target_modules: list[str] | None = Field(
        None, description="Modules IA3 rescales; default: peft's choice for the architecture (k, v and down proj)."
    )
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the frozen base for qlora.")
    init_adapter: str | None = Field(
        None,
        description="Continue training this LoRA adapter (a folder or an adapter run directory) instead of a fresh "
        "one; its own rank and target modules apply (lora, dora, qlora).",
    )

    @model_validator(mode="after")
    def _check_init(self) -> TuningConfig:
        if self.init_adapter and self.mode not in ("lora", "dora", "qlora"):
            raise ValueError(f"tuning.init_adapter: continues a LoRA adapter; tuning.mode {self.mode} trains none")
        return self


class TeacherGeneration(Section):
    base_url: str | None = Field(
        None,
        description="OpenAI-compatible endpoint serving the teacher (distill.teacher is then the model name sent); "
        "null: load the teacher locally.",
    )
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Environment variable holding the endpoint's API key; null for keyless servers."
    )
    max_new_tokens: int = Field(256, ge=1, le=MAX_TOKENS, description="Longest teacher reply.")
    temperature: float = Field(0.0, ge=0, description="Teacher sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass when temperature > 0.")
    seed: int = Field(0, description="Sampling seed (local teacher; sent to the endpoint too).")
    batch_size: int = Field(16, ge=1, description="Local teacher: prompts per generation batch.")
    concurrency: int = Field(8, ge=1, description="Endpoint: requests in flight at once.")
    timeout: float = Field(120.0, gt=0, description="Endpoint: seconds before a request counts as failed.")
    max_retries: int = Field(2, ge=0, description="Endpoint: retries of a failed request (with backoff).")
    max_failed: float = Field(
        0.0, ge=0, le=1, description="Stop when more than this fraction of prompts got no reply (all are counted)."
    )


class DistillConfig(Section):
    teacher: str | None = Field(
        None,
        description="The teacher: a preset, model folder, hub id or tunelab run directory (with generation.base_url: "
        "the model name at that endpoint).",
    )
    mode: Literal["logits", "completions"] = Field(
        "logits",
        description="logits (match the teacher's token distributions; same tokenizer) or completions (SFT on replies "
        "the teacher writes for the training prompts; any tokenizer or endpoint).",
    )
    loss: Literal["forward", "reverse", "mix"] = Field(
        "forward", description="logits: forward KL(teacher || student), reverse KL(student || teacher), or mix."
    )
    mix: float = Field(0.5, ge=0, le=1, description="loss mix: weight of forward KL (reverse gets 1 - mix).")
    temperature: float = Field(
        1.0, gt=0, description="logits: softens both distributions; the KL term is scaled by its square."
    )
    ce_weight: float = Field(
        0.0, ge=0, description="logits: weight of the hard-label cross-entropy on the data (0: pure distillation)."
    )
    generation: TeacherGeneration = Field(
        default_factory=TeacherGeneration, description="completions: how the teacher writes the replies."
    )

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.generation.base_url and self.mode != "completions":
            raise ValueError("generation.base_url: an endpoint teacher needs mode: completions")
        return self


class DPOSettings(Section):
    beta: float = Field(0.1, gt=0, description="Strength of the KL constraint to the reference (DPO's beta).")
    loss_type: Literal["sigmoid", "ipo", "robust", "apo_zero"] = Field(
        "sigmoid",
        description="sigmoid (DPO), ipo (squared loss on length-averaged log-ratios), robust (rDPO: unbiased under "
        "label_smoothing flipped labels) or apo_zero (push chosen up and rejected down, each against the reference).",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="sigmoid and robust: assumed fraction of flipped preference labels."
    )
    reference: Literal["auto", "precompute"] = Field(
        "auto",
        description="auto (adapters disabled for adapter modes, a frozen copy for full tuning) or precompute "
        "(reference log-probs computed once before training, no copy kept).",
    )


class SimPOSettings(Section):
    beta: float = Field(2.0, gt=0, description="Scale of the length-normalized log-probability reward.")
    gamma: float = Field(0.5, ge=0, description="Target reward margin between chosen and rejected.")


class ORPOSettings(Section):
    beta: float = Field(0.1, gt=0, description="Weight of the odds-ratio term beside the SFT loss on chosen replies.")


class KTOSettings(Section):
    beta: float = Field(0.1, gt=0, description="Strength of the KL constraint to the reference.")
    desirable_weight: float = Field(1.0, gt=0, description="Weight of the loss on desirable completions.")
    undesirable_weight: float = Field(1.0, gt=0, description="Weight of the loss on undesirable completions.")


METHOD_NAMES = ("sft", "dpo", "simpo", "orpo", "kto", "reward", "classify", "ner", "grpo", "distill")
# Round-1 flat keys -> the section that holds them now (a clear error instead of "extra inputs not permitted").
MOVED_METHOD_KEYS = {
    "beta": ("dpo", "simpo", "orpo", "kto"),
    "loss_type": ("dpo",),
    "label_smoothing": ("dpo",),
    "reference": ("dpo",),
    "gamma": ("simpo",),
    "desirable_weight": ("kto",),
    "undesirable_weight": ("kto",),
}


class MethodConfig(Section):
    name: Literal[METHOD_NAMES] = Field(  # type: ignore[valid-type]
        "sft", description="Training objective; one of the methods in docs/methods.md (tunelab.methods.METHODS)."
    )
    dpo: DPOSettings = Field(default_factory=DPOSettings, description="Settings for dpo.")
    simpo: SimPOSettings = Field(default_factory=SimPOSettings, description="Settings for simpo.")
    orpo: ORPOSettings = Field(default_factory=ORPOSettings, description="Settings for orpo.")
    kto: KTOSettings = Field(default_factory=KTOSettings, description="Settings for kto.")
    grpo: GRPOConfig = Field(default_factory=lambda: GRPOConfig(), description="Settings for grpo.")
    distill: DistillConfig = Field(default_factory=lambda: DistillConfig(), description="Settings for distill.")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            for key, owners in MOVED_METHOD_KEYS.items():
                if key in raw:
                    if key == "beta" and raw.get("name") == "grpo":
                        raise ValueError("method.beta: grpo's KL weight is method.grpo.kl_beta")
                    name = raw.get("name") if raw.get("name") in owners else owners[0]
                    others = f" (or method.{'/'.join(o for o in owners if o != name)}.{key})" if len(owners) > 1 else ""
                    raise ValueError(f"method.{key} moved: write method.{name}.{key}{others}; each method's settings "
                                     "now sit in its own section")  # fmt: skip
        return raw

    @model_validator(mode="after")
    def _check_settings(self) -> MethodConfig:
        if self.name == "grpo" and not self.grpo.rewards:
            raise ValueError("method grpo needs at least one reward source under method.grpo.rewards, "
                             "e.g. [{function: parity}]")  # fmt: skip
        if self.name == "distill" and not self.distill.teacher:
            raise ValueError("method distill needs method.distill.teacher (a model, run directory or endpoint model)")
        return self


class DatasetConfig(Section):
    path: str = Field(
        description="A .jsonl/.json/.csv/.tsv/.parquet/.conll file, a local datasets folder, or a hub dataset id."
    )
    format: Literal[FORMAT_NAMES] = Field(  # type: ignore[valid-type]
        "auto",
        description="Record format; auto detects it from the first row's fields (method classify/ner: labelled/token_tags).",
    )
    columns: dict[str, str] | None = Field(
        None,
        description="Map the format's field names to yours, e.g. {instruction: question, output: answer}; a value "
        'with {field} is a template over several fields, e.g. {text: "{title}. {description}"}.',
    )
    reader: Literal[READER_NAMES] = Field(  # type: ignore[valid-type]
        "auto",
        description="How the file is read; auto: by its suffix (.jsonl .json .csv .tsv .parquet .conll).",
    )
    encoding: str = Field(
        "utf-8",
        description="Text encoding of the file (utf-8, latin-1, cp1252, utf-16, ...); auto detects it (charset-normalizer).",
    )
    delimiter: str | None = Field(
        None, description="Field separator of a CSV file (one character); default: a tab for .tsv, else a comma."
    )
    skip_records: list[int] = Field(
        default_factory=list,
        description="0-based record indices to leave out; data.check.leakage: drop sets them on leaked eval records.",
    )
    split: str = Field("train", description="Split to read from a datasets folder or hub dataset.")
    weight: float = Field(1.0, gt=0, description="Mixing weight: examples drawn per epoch relative to its size.")
    max_samples: int | None = Field(None, ge=1, description="Use only the first N records.")
    name: str | None = Field(
        None, description="Task name in per-task eval results (multi-task runs); default: the file name without suffix."
    )
    metrics: list[str | MetricSpec] | None = Field(
        None,
        description="Eval datasets only: this task's metrics instead of eval.metrics (e.g. json for one, rouge for another).",
    )

    @model_validator(mode="after")
    def _check_metrics(self) -> DatasetConfig:
        for m in self.metrics or []:
            check_metric_name(m)
        codec_name(self.encoding)  # an unknown encoding fails at load time, naming it
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ValueError(f"delimiter must be one character, got {self.delimiter!r}")
        return self

    def task_name(self) -> str:
        return self.name or Path(self.path.rstrip("/")).stem or self.path


class DataConfig(Section):
    train: list[DatasetConfig] = Field(default_factory=list, description="Training datasets (mixed by weight).")
    eval: list[DatasetConfig] = Field(default_factory=list, description="Evaluation datasets.")
    eval_ratio: float = Field(
        0.0, ge=0, lt=1, description="Fraction of the training data split off for eval (by seed)."
    )
    seed: int = Field(0, description="Seed for mixing and the eval split.")
    max_length: int = Field(
        1024, ge=8, le=MAX_TOKENS, description="Maximum tokens per example (and per packed sequence)."
    )
    truncation: Literal["truncate", "drop"] = Field(
        "truncate",
        description="What to do with longer examples: truncate the end, or drop them (both are counted).",
    )
    train_on_inputs: bool = Field(
        False, description="Also train on prompt/user/system tokens, not only assistant turns."
    )
    packing: bool = Field(False, description="Pack several examples into one sequence (no attention across examples).")
    max_fully_masked: float = Field(
        0.5, ge=0, le=1, description="Fail if more than this fraction of examples has no trainable token."
    )
    max_record_bytes: int = Field(
        MAX_RECORD_BYTES,
        ge=1024,
        description="Largest record accepted, in bytes of its line or values (4 MiB); a bigger one is an error naming "
        "file, line and size, measured before it is parsed or tokenized.",
    )
    cache_dir: str | None = Field(None, description="Tokenized-data cache; default ~/.cache/tunelab/tokenized.")
    num_proc: int = Field(
        1, ge=1, description="Worker processes that tokenize SFT data (the result is the same for any number)."
    )
    backend: Literal["local", "ray"] = Field(
        "local", description="Where SFT tokenization runs: local processes, or Ray Data (pip install 'ray[data]')."
    )
    check: CheckOptions | None = Field(
        default_factory=CheckOptions,
        description="Data check before training (duplicates, leakage, PII...): errors stop the run; null skips it.",
    )

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        for i, ds in enumerate(self.train):
            if ds.metrics is not None:
                raise ValueError(f"data.train[{i}].metrics: metrics belong on eval datasets (data.eval, eval.data)")
        return self


class TrackingConfig(Section):
    project: str | None = Field(
        None,
        min_length=1,
        description="Project (wandb) / experiment (mlflow); default: the config file's stem, else tunelab.",
    )
    run_name: str | None = Field(
        None,
        min_length=1,
        description="The run's name in the trackers; default: output.name, else the run folder's name.",
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Run tags: mlflow tags, wandb tags as key:value, a text entry in TensorBoard."
    )
    uri: str | None = Field(
        None,
        description="mlflow tracking URI: sqlite:///file.db, a folder (file store) or http(s)://server; default: "
        "MLFLOW_TRACKING_URI, else sqlite:///<output.dir>/mlflow.db.",
    )


class TrainConfig(Section):
    epochs: float = Field(
        1.0, gt=0, le=100_000, description="Passes over the training data (ignored when max_steps is set)."
    )
    max_steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, ge=1, le=65536, description="Sequences per micro-batch per process.")
    grad_accum: int = Field(1, ge=1, le=65536, description="Micro-batches per optimizer step.")
    lr: float = Field(
        2e-4, gt=0, le=1, description="Peak learning rate (AdamW; above 1 every step wrecks the weights)."
    )
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps spent warming up linearly.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not applied to norms and biases).")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this value; null disables.")
    seed: int = Field(0, description="Seed for initialization, shuffling and dropout.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Mixed precision; auto is bf16 on a capable GPU and fp32 on CPU."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: the physical cores.")
    log_every: int = Field(10, ge=1, le=MAX_STEPS, description="Log metrics every N optimizer steps.")
    eval_every: int | None = Field(
        None, ge=1, le=MAX_STEPS, description="Evaluate every N optimizer steps (and always at the end)."
    )
    save_every: int | None = Field(None, ge=1, le=MAX_STEPS, description="Checkpoint every N optimizer steps.")
    save_total_limit: int = Field(2, ge=1, description="Keep at most this many checkpoints (plus the best).")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without a better eval loss."
    )
    group_by_length: bool = Field(
        True, description="Batch unpacked examples of similar length together (less padding; order still shuffled)."
    )
    load_best_at_end: bool = Field(
        False, description="Write final/ from the checkpoint with the best eval loss instead of the last step."
    )
    trackers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, description="Experiment trackers to log to (none by default; see docs/training.md)."
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="Project, run name, tags and store of the trackers."
    )


class ExtractConfig(Section):
    method: Literal["regex", "json", "first_line", "label_set"] = Field(
        "first_line",
        description="How the label is read from an output: regex group, JSON field, first line, or label set.",
    )
    pattern: str | None = Field(
        None, description="Regex for method regex; the group named 'label' or group 1 is the label."
    )
    field: str = Field("label", description="JSON field that holds the label for method json.")
    labels: list[str] | None = Field(
        None, description="Closed label set; extracted labels outside it count as unparseable (required for label_set)."
    )
    case_sensitive: bool = Field(False, description="Match labels with case (default: case-insensitive).")

    @model_validator(mode="after")
    def _check(self) -> ExtractConfig:
        if self.method == "regex" and not self.pattern:
            raise ValueError("eval.extract.method regex needs eval.extract.pattern")
        if self.method == "label_set" and not self.labels:
            raise ValueError("eval.extract.method label_set needs eval.extract.labels")
        return self


DEFAULT_SINGLE_PROMPT = (
    "Rate the quality of the assistant's answer to the question on a scale of {min_score} to {max_score}.\n"
    "{rubric}\n\n[Question]\n{question}\n\n[Reference answer]\n{reference}\n\n[Answer]\n{answer}\n\n"
    'Reply with a JSON object {{"score": N}} and nothing else.'
)
DEFAULT_PAIRWISE_PROMPT = (
    "Which assistant answers the question better?\n{rubric}\n\n[Question]\n{question}\n\n"
    "[Answer A]\n{answer_a}\n\n[Answer B]\n{answer_b}\n\n"
    'Reply with a JSON object {{"winner": "A"}}, {{"winner": "B"}} or {{"winner": "tie"}} and nothing else.'
)


class JudgeConfig(Section):
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible endpoint of the judge model.")
    model: str = Field("judge", description="Model name sent to the judge endpoint.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="Environment variable that holds the judge API key; null for keyless local servers.",
    )
    system_prompt: str = Field(
        "You are a strict, fair evaluator.", description="System message of every judge request."
    )
    single_prompt: str = Field(
        DEFAULT_SINGLE_PROMPT,
        description="Single-answer template; fields {question} {answer} {reference} {rubric} {min_score} {max_score}.",
    )
    pairwise_prompt: str = Field(
        DEFAULT_PAIRWISE_PROMPT, description="Pairwise template; fields {question} {answer_a} {answer_b} {rubric}."
    )
    rubric: str = Field(
        "Judge correctness first, then helpfulness and clarity.", description="Criteria inserted into both templates."
    )
    min_score: float = Field(
        1, description="Lowest valid score; replies outside [min_score, max_score] are unparseable."
    )
    max_score: float = Field(10, description="Highest valid score.")
    temperature: float = Field(
        0.0, ge=0, description="Judge sampling temperature (0 makes cached verdicts reproducible)."
    )
    max_tokens: int = Field(256, ge=1, description="Longest judge reply.")
    timeout: float = Field(60.0, gt=0, description="Seconds before a judge request counts as failed.")
    max_retries: int = Field(2, ge=0, description="Retries of a failed request (by the openai client, with backoff).")
    concurrency: int = Field(4, ge=1, description="Judge requests in flight at once.")
    cache_path: str | None = Field(
        None, description="SQLite file caching verdicts by request hash; default ~/.cache/tunelab/judge.sqlite."
    )


class RewardSource(Section):
    """One grpo reward: exactly one of function, model, judge."""

    function: str | None = Field(
        None,
        description="A built-in reward (parity, number) or a .py file defining reward(prompt, completion) -> float.",
    )
    model: str | None = Field(
        None, description="A folder (or run directory) with a num_labels=1 sequence-classification reward model."
    )
    judge: JudgeConfig | None = Field(
        None, description="An LLM judge (eval.judge keys); its single-answer score is mapped to [0, 1]."
    )
    weight: float = Field(1.0, description="Weight of this source in the summed reward.")
    name: str | None = Field(
        None, description="Metric name (reward/NAME); default: function name, model folder or judge."
    )

    @model_validator(mode="after")
    def _one_source(self) -> RewardSource:
        given = [k for k in ("function", "model", "judge") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a reward source needs exactly one of function, model, judge (got {given or 'none'})")
        return self


class GRPOConfig(Section):
    group_size: int = Field(
        8, ge=2, description="Completions sampled per prompt; advantages are normalized in the group."
    )
    max_new_tokens: int = Field(64, ge=1, le=MAX_TOKENS, description="Longest sampled completion, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the training completions.")
    kl_beta: float = Field(
        0.04,
        ge=0,
        description="Weight of the KL penalty to the reference (adapters off or a frozen copy); 0: none kept.",
    )
    eval_temperature: float = Field(
        0.0, ge=0, description="Eval completions: 0 is one greedy completion per prompt, above 0 group_size samples."
    )
    rewards: list[RewardSource] = Field(
        default_factory=list,
        description="Reward sources, summed by weight: {function: NAME or FILE.py}, {model: DIR} or {judge: {...}} (docs/methods.md).",
    )


MethodConfig.model_rebuild()  # resolve its `grpo` field: GRPOConfig needs JudgeConfig, defined after MethodConfig


class ForgettingConfig(Section):
    enabled: bool = Field(True, description="Measure general-text perplexity before and after training.")
    texts: str | None = Field(
        None, description="A JSONL file of {text: ...} probes; default: the general-text set shipped with tunelab."
    )
    threshold: float = Field(
        0.10, gt=0, description="Flag a regression when perplexity rises by more than this fraction (0.10 = +10%)."
    )
    max_length: int = Field(512, ge=8, le=MAX_TOKENS, description="Truncate each probe text to this many tokens.")


class EvalConfig(Section):
    baseline: bool = Field(True, description="Evaluate the base model before training on the same data and decoding.")
    data: list[DatasetConfig] = Field(
        default_factory=list,
        description="Datasets for generation metrics and the before/after comparison (default: data.eval).",
    )
    metrics: list[str | MetricSpec] = Field(
        default_factory=lambda: list[str | MetricSpec](["loss"]),
        description="Metrics to compute: names, or {name, options} entries.",
    )
    max_new_tokens: int = Field(128, ge=1, le=MAX_TOKENS, description="Generation length for generation-based metrics.")
    batch_size: int = Field(16, ge=1, description="Prompts per generation batch.")
    temperature: float = Field(0.0, ge=0, description="0 is greedy decoding; above 0 samples with eval.seed.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass when temperature > 0.")
    seed: int = Field(0, description="Seed for sampled decoding and the bootstrap.")
    bootstrap_resamples: int = Field(
        10000, ge=100, le=10_000_000, description="Paired bootstrap resamples for confidence intervals."
    )
    extract: ExtractConfig = Field(default_factory=ExtractConfig, description="Label extraction for classification.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="LLM-as-a-judge endpoint and prompts.")
    rewards: list[RewardSource] = Field(
        default_factory=list,
        description="Sources the reward metric scores outputs with (as method.grpo.rewards); "
        "a grpo run defaults to its method.grpo.rewards.",
    )
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig, description="The forgetting check.")
    fail_on_regression: bool = Field(False, description="Fail the run when the forgetting check regresses.")

    @model_validator(mode="after")
    def _check_metrics(self) -> EvalConfig:
        for m in self.metrics:
            check_metric_name(m)
        return self

    def metric_specs(self) -> list[MetricSpec]:
        """Every metric entry as a MetricSpec (plain names get no options)."""
        return metric_specs(self.metrics)


class OutputConfig(Section):
    dir: str = Field("runs", description="Folder that holds run directories.")
    name: str | None = Field(None, description="Run name; default: derived from the config file name and time.")
    overwrite: bool = Field(False, description="Reuse an existing run directory of the same name.")


class GateConfig(Section):
    metric: str = Field(
        "eval_loss",
        description="What the gate reads: a key of the stage's last eval record in metrics.jsonl (eval_loss, "
        "eval_loss/<task>, eval_<method metric>) or '<metric>.<score>' of eval/final.json (json.field_accuracy, "
        "<task>/exact_match.exact_match).",
    )
    min: float | None = Field(None, description="Pass only when the metric is at least this.")
    max: float | None = Field(None, description="Pass only when the metric is at most this (for losses).")
    improved: bool = Field(
        False, description="Also require a significant improvement over the baseline (eval/comparison.json)."
    )
    forgetting: bool = Field(True, description="Also require the forgetting check to hold (when it ran).")

    @model_validator(mode="after")
    def _check(self) -> GateConfig:
        if self.min is None and self.max is None and not self.improved:
            raise ValueError("a gate needs min, max or improved: true")
        return self


class StageConfig(Section):
    name: str = Field(description="Stage name; its run directory is <output.name>/<index>-<name>.")
    gate: GateConfig | None = Field(
        None, description="Continue to the next stage only if this stage's result passes (see GateConfig)."
    )
    eval: dict[str, Any] | None = Field(None, description="Overrides merged into the run's eval section.")
    method: dict[str, Any] | None = Field(None, description="Overrides merged into the run's method section.")
    data: dict[str, Any] | None = Field(None, description="Overrides merged into the run's data section.")
    train: dict[str, Any] | None = Field(None, description="Overrides merged into the run's train section.")
    tuning: dict[str, Any] | None = Field(None, description="Overrides merged into the run's tuning section.")


# --------------------------------------------------------------------------- tune (hyperparameter search)

LOOP_METRIC_PREFIX = "eval_"  # keys of the training loop's eval records (eval_loss, eval_ppl, eval_<method metric>)
MEASURED_OBJECTIVES = ("time", "cost")  # measured per trial: wall seconds, and seconds x tune.price_per_hour
LOWER_IS_BETTER_WORDS = ("loss", "ppl", "perplexity", "time", "cost")


class SearchParam(Section):
    """One dimension of the search space: a config key's distribution (tunelab.tune.space)."""

    type: Literal["float", "int", "categorical"] = Field(description="float (uniform or log), int, or categorical.")
    low: float | None = Field(None, description="float/int: the smallest value.")
    high: float | None = Field(None, description="float/int: the largest value (inclusive).")
    log: bool = Field(False, description="float/int: sample on a log scale (low must be above 0).")
    step: float | None = Field(None, gt=0, description="float/int: the spacing of values (int default 1).")
    choices: list[Any] | None = Field(None, description="categorical: the values to choose from.")
    values: list[Any] | None = Field(
        None, description="grid sampler: the values of a float (ints and categoricals enumerate their own)."
    )
    when: dict[str, Any] | None = Field(
        None,
        description="Condition: sample this key only when these other keys (config keys, earlier in the space or "
        "fixed in the config) have these values (a value or a list of values), e.g. {tuning.mode: lora}.",
    )

    @model_validator(mode="after")
    def _check(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs choices: [...]")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type} parameter needs low < high (got low {self.low}, high {self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (optuna samples one or the other)")
        if self.type == "int" and any(v is not None and v != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError("an int parameter needs whole numbers for low, high and step")
        return self


class TuneObjective(Section):
    metric: str = Field(
        "eval_loss",
        description="What a trial is scored by: a key of the training loop's last eval record (eval_loss, eval_ppl, "
        "eval_<method metric>), '<metric>.<score>' of eval/final.json (json.json_field_accuracy), time (wall "
        "seconds) or cost (time x tune.price_per_hour).",
    )
    direction: Literal["auto", "minimize", "maximize"] = Field(
        "auto", description="auto: minimize losses, perplexity, time and cost; maximize everything else."
    )

    def resolved_direction(self) -> Literal["minimize", "maximize"]:
        if self.direction != "auto":
            return self.direction
        return "minimize" if any(w in self.metric.lower() for w in LOWER_IS_BETTER_WORDS) else "maximize"


class TunePruner(Section):
    kind: Literal["none", "median", "halving", "hyperband"] = Field(
        "median",
        description="Stop unpromising trials early on their intermediate eval values: median (below the median of "
        "earlier trials at the same step), halving (successive halving) or hyperband; none keeps every trial.",
    )
    metric: str | None = Field(
        None,
        description="The intermediate value: a key of the loop's eval records (train.eval_every); default: the first "
        "objective when it is one, else eval_loss.",
    )
    startup_trials: int = Field(2, ge=0, description="median: finished trials before any trial is pruned.")
    warmup_steps: int = Field(0, ge=0, description="median: optimizer steps of a trial before it can be pruned.")
    min_resource: int | None = Field(
        None, ge=1, description="halving/hyperband: steps every trial gets first; default: train.eval_every."
    )
    reduction_factor: int = Field(3, ge=2, description="halving/hyperband: 1/factor of the trials go on each rung.")


class TuneConfig(Section):
    space: dict[str, SearchParam] = Field(
        description="Config keys (dotted, as in overrides: train.lr, tuning.lora.r) -> their distributions."
    )
    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe", description="tpe (Bayesian, Optuna's TPE), random, or grid (every combination)."
    )
    startup_trials: int = Field(4, ge=1, description="tpe: random trials before the model of good values is used.")
    seed: int = Field(0, description="Seed of the sampler.")
    trials: int | None = Field(
        20,
        ge=1,
        description="Budget: finished (complete or pruned) trials of the study, over every process; null: no "
        "limit (grid: the grid's size).",
    )
    timeout: float | None = Field(
        None, gt=0, description="Budget: wall seconds of this invocation (a running trial finishes)."
    )
    objectives: list[TuneObjective] = Field(
        default_factory=lambda: [TuneObjective()],
        min_length=1,
        description="One objective, or several (e.g. eval_loss and time: a Pareto front; no pruning then).",
    )
    pruner: TunePruner = Field(
        default_factory=TunePruner,
        description="Early stopping of unpromising trials; default median, none with several objectives.",
    )
    study: str | None = Field(
        None, description="Study name and folder under output.dir; default: output.name, else the config file's stem."
    )
    storage: str | None = Field(
        None,
        description="Optuna storage: a SQLite file, sqlite:///FILE or postgresql+psycopg://... (shared by machines); "
        "default: study.db in the study folder.",
    )
    workers: int = Field(1, ge=1, le=256, description="Trials in parallel on this machine (processes).")
    heartbeat: int | None = Field(
        60,
        ge=1,
        description="Seconds between a running trial's heartbeats in the storage; a trial silent for 3 beats (its "
        "machine died) is failed and retried; null: off.",
    )
    price_per_hour: float | None = Field(
        None, gt=0, description="Price of this machine per hour, for the cost objective (and the plan)."
    )
    compare: bool = Field(
        True,
        description="After the search: train the config as written (the default) and compare it with the best "
        "trial on eval.data (the test split) with paired bootstrap CIs.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_default_pruning_of_several_objectives(cls, data: Any) -> Any:
        """Optuna prunes single-objective studies only: several objectives without a pruner get none (a pruner
        asked for is an error below)."""
        if isinstance(data, dict) and "pruner" not in data and len(data.get("objectives") or []) > 1:
            return data | {"pruner": {"kind": "none"}}
        return data

    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        if not self.space:
            raise ValueError("tune.space: name at least one config key to search, e.g. {train.lr: {type: float, ...}}")
        keys = list(self.space)
        for i, (key, param) in enumerate(self.space.items()):
            for other in param.when or {}:
                if other == key or (other in self.space and keys.index(other) > i):
                    raise ValueError(f"tune.space.{key}.when: {other} must come before {key} in the space")
        if self.sampler == "grid":
            for key, param in self.space.items():
                if param.type == "float" and not param.values and param.step is None:
                    raise ValueError(f"tune.space.{key}: the grid sampler needs values: [...] (or a step) for a float")
                if param.when:  # Optuna's grid is a product: where the condition fails, points would repeat a run
                    raise ValueError(f"tune.space.{key}: the grid sampler cannot skip a conditional key (when:); "
                                     "use sampler random or tpe, or one grid study per condition")  # fmt: skip
        if len(self.objectives) > 1 and self.pruner.kind != "none":
            raise ValueError("tune.pruner: Optuna prunes single-objective studies only; set pruner: {kind: none} "
                             "with several objectives")  # fmt: skip
        if any(o.metric == "cost" for o in self.objectives) and self.price_per_hour is None:
            raise ValueError("tune.objectives: cost needs tune.price_per_hour")
        return self

    def prune_metric(self) -> str:
        if self.pruner.metric:
            return self.pruner.metric
        first = self.objectives[0].metric
        return first if first.startswith(LOOP_METRIC_PREFIX) else "eval_loss"


class RunConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig, description="Which model to start from.")
    tuning: TuningConfig = Field(default_factory=TuningConfig, description="Which parameters train.")
    method: MethodConfig = Field(default_factory=MethodConfig, description="The training objective.")
    data: DataConfig = Field(default_factory=DataConfig, description="Datasets, formats and tokenization.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="The optimization loop.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation before and after training.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Where runs are written.")
    stages: list[StageConfig] = Field(
        default_factory=list,
        description="Run several trainings in sequence (e.g. sft then dpo); each stage overrides sections of "
        "this config and starts from the previous stage's final model (adapters merged).",
    )
    tune: TuneConfig | None = Field(
        None, description="Hyperparameter search for `tunelab tune` (docs/tuning.md); `train` ignores it."
    )

    @field_validator("tune")
    @classmethod
    def _tune_keys(cls, tune: TuneConfig | None) -> TuneConfig | None:
        for key, param in (tune.space if tune else {}).items():
            for name in (key, *(param.when or {})):
                check_key(name, f"space.{key}")
        return tune

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.tuning.mode == "qlora" and self.model.dtype == "float32":
            raise ValueError("tuning.mode qlora computes in bf16/fp16; set model.dtype to auto or bfloat16")
        if asks_reward(self) and not eval_settings(self).rewards:
            raise ValueError("eval.metrics reward: no reward sources; set eval.rewards, e.g. [{function: parity}] "
                             "(a grpo run uses its method.grpo.rewards)")  # fmt: skip
        for i in range(len(self.stages)):
            stage_config(self, i)  # every stage must validate now, not hours into the run
        if self.tune is not None:
            _check_tune(self)
        _check_task_names(self)
        return self


def _check_tune(cfg: RunConfig) -> None:
    """What the search needs from the rest of the config: one run (no stages), intermediate evals to prune on."""
    tune = cfg.tune
    assert tune is not None
    if cfg.stages:
        raise ValueError("tune: a search tunes one run; remove stages: (tune each stage's config on its own)")
    if tune.pruner.kind != "none" and not cfg.train.eval_every:
        raise ValueError("tune.pruner: pruning reads intermediate eval values; set train.eval_every "
                         "(or tune.pruner.kind: none)")  # fmt: skip
    if not (cfg.data.eval or cfg.data.eval_ratio > 0):
        raise ValueError("tune: trials are scored on a validation split; set data.eval or data.eval_ratio")


def check_key(key: str, where: str) -> None:
    """`key` (dotted) names a field of the run config, e.g. train.lr or tuning.lora.r."""
    cls: Any = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = cls.model_fields if cls is not None else {}
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; expected one of: {', '.join(fields)}"
            raise ValueError(
                f"{where}: {key} is not a config key: no {part!r} in {'.'.join(parts[:i]) or 'the config'}{hint}"
            )
        cls = _section_type(fields[part].annotation) if i < len(parts) - 1 else None
        if i < len(parts) - 1 and cls is None:
            raise ValueError(f"{where}: {key} is not a config key: {'.'.join(parts[: i + 1])} is not a section")


def asked_metrics(cfg: RunConfig) -> list[MetricSpec]:
    """Every metric the before/after evaluation may compute: eval.metrics and each eval dataset's own."""
    per_task = [m for ds in [*cfg.data.eval, *cfg.eval.data] for m in metric_specs(ds.metrics or [])]
    return [*cfg.eval.metric_specs(), *per_task]


def asks_reward(cfg: RunConfig) -> bool:
    return any(m.name == "reward" for m in asked_metrics(cfg))


def eval_settings(cfg: RunConfig) -> EvalConfig:
    """cfg.eval, where a grpo run's reward sources are the reward metric's default (eval.rewards unset)."""
    if cfg.eval.rewards or cfg.method.name != "grpo":
        return cfg.eval
    return cfg.eval.model_copy(update={"rewards": cfg.method.grpo.rewards})


def _check_task_names(cfg: RunConfig) -> None:
    """Datasets that feed one evaluation need distinct task names, or their results would merge."""
    feeds = [*cfg.data.train, *cfg.data.eval] if cfg.data.eval_ratio > 0 else list(cfg.data.eval)
    for where, datasets in (("data", feeds), ("eval.data", cfg.eval.data)):
        seen: dict[str, str] = {}
        for ds in datasets:
            name = ds.task_name()
            if seen.setdefault(name, ds.path) != ds.path:
                raise ValueError(f"{where}: {seen[name]} and {ds.path} both have the task name {name!r}; "
                                 "give them distinct `name:` keys")  # fmt: skip


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def stage_config(cfg: RunConfig, index: int, model_path: str | None = None) -> RunConfig:
    """The config stage `index` runs with: this config, the stage's section overrides merged in, no stages,
    output.name <name>/<index>-<stage>, and the model replaced by `model_path` (the previous stage's result)."""
    stage = cfg.stages[index]
    raw = cfg.model_dump(mode="json", exclude={"stages"})
    for section in ("method", "data", "train", "tuning", "eval"):
        over = getattr(stage, section)
        if over:
            raw[section] = _merge(raw[section], over)
    raw["output"]["name"] = f"{cfg.output.name or 'stages'}/{index + 1}-{stage.name}"
    if model_path is not None:
        raw["model"]["name_or_path"] = model_path
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ValueError(format_validation_error(e, f"stages[{index}] ({stage.name})")) from None


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read YAML (or start from defaults when path is None), apply `a.b=c` overrides, validate."""
    cfg = load_yaml_model(RunConfig, path, overrides, "sections (model, data, train, ...)")
    return _resolve_paths(cfg, Path(path).parent if path else Path.cwd())


M = TypeVar("M", bound=BaseModel)


def load_yaml_model(model: type[M], path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                    expected: str = "keys") -> M:  # fmt: skip
    """A YAML mapping validated into `model`; every error names the file, the line and the key."""
    raw: dict[str, Any] = {}
    text = ""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            text = read_text(path, "config file")
        except DataError as e:  # not UTF-8 text: the file, line and byte offset
            raise ConfigError(str(e)) from None
        try:
            raw = safe_load(text) or {}
        except DuplicateKeyError as e:
            raise ConfigError(f"{path}:{e.line}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of {expected}, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path) if path else "<overrides>", text, model)) from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested mapping; the value is parsed as YAML (so 3, true, [a, b] work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
    try:
        node[parts[-1]] = safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: not valid YAML: {e}") from None


def _resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Data paths in a config file are relative to that file, so configs work from any folder."""

    def fix(ds: DatasetConfig) -> DatasetConfig:
        p = Path(ds.path).expanduser()
        if not p.is_absolute() and (base / p).exists():
            return ds.model_copy(update={"path": str((base / p).resolve())})
        return ds

    data = cfg.data.model_copy(
        update={"train": [fix(d) for d in cfg.data.train], "eval": [fix(d) for d in cfg.data.eval]}
    )
    evals = cfg.eval.model_copy(
        update={"data": [fix(d) for d in cfg.eval.data], "rewards": _resolve_rewards(cfg.eval.rewards, base)}
    )
    stages = [_resolve_stage(st, base) for st in cfg.stages]
    grpo = cfg.method.grpo.model_copy(update={"rewards": _resolve_rewards(cfg.method.grpo.rewards, base)})
    method = cfg.method.model_copy(update={"grpo": grpo})
    return cfg.model_copy(update={"data": data, "eval": evals, "stages": stages, "method": method})


def _near(value: str, base: Path) -> str:
    """`value` resolved against the config file's folder when it names something there, else as given
    (a built-in reward name such as parity stays a name)."""
    p = Path(value).expanduser()
    return str((base / p).resolve()) if not p.is_absolute() and (base / p).exists() else value


def _resolve_rewards(sources: list[RewardSource], base: Path) -> list[RewardSource]:
    """Reward files (.py) and reward-model folders are relative to the config file too."""
    return [r.model_copy(update={k: _near(v, base) for k in ("function", "model") if (v := getattr(r, k))})
            for r in sources]  # fmt: skip


def _resolve_stage(stage: StageConfig, base: Path) -> StageConfig:
    """Dataset paths and reward files/folders in a stage's overrides are relative to the config file too."""

    def fix(d: Any) -> Any:
        if isinstance(d, dict) and isinstance(d.get("path"), str):
            p = Path(d["path"]).expanduser()
            if not p.is_absolute() and (base / p).exists():
                return {**d, "path": str((base / p).resolve())}
        return d

    def fix_rewards(v: Any) -> Any:  # raw entries, validated later with the stage config
        if not isinstance(v, list):
            return v
        return [{k: _near(x, base) if k in ("function", "model") and isinstance(x, str) else x for k, x in r.items()}
                if isinstance(r, dict) else r for r in v]  # fmt: skip

    update: dict[str, Any] = {}
    for section, keys in (("data", ("train", "eval")), ("eval", ("data",))):
        over = getattr(stage, section)
        if over:
            update[section] = {k: [fix(d) for d in v] if k in keys and isinstance(v, list) else v
                               for k, v in over.items()}  # fmt: skip
    if isinstance(update.get("eval", {}).get("rewards"), list):
        update["eval"]["rewards"] = fix_rewards(update["eval"]["rewards"])
    method = stage.method or {}
    if isinstance(grpo := method.get("grpo"), dict) and "rewards" in grpo:
        update["method"] = {**method, "grpo": {**grpo, "rewards": fix_rewards(grpo["rewards"])}}
    return stage.model_copy(update=update)


def format_validation_error(
    err: ValidationError, source: str, text: str = "", model: type[BaseModel] | None = None
) -> str:
    """One line per problem: file:line, the dotted key, and what was expected (with a did-you-mean hint)."""
    lines = [f"{source}: invalid config"]
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc) or "(root)"
        where = _yaml_line(text, e["loc"])
        prefix = f"  {source}:{where}: " if where else "  "
        if e["type"] == "extra_forbidden":
            hint = _did_you_mean(model or RunConfig, e["loc"])
            lines.append(f"{prefix}unknown key {key!r}{hint}")
        else:
            lines.append(f"{prefix}{key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _did_you_mean(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    cls: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part) if hasattr(cls, "model_fields") else None
        if field is None:
            return ""
        cls = _section_type(field.annotation)
        if cls is None:
            return ""
    names = list(cls.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else f" (expected one of: {', '.join(names)})"


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):  # list[DatasetConfig], X | None
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def _yaml_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """1-based line of a key path in the YAML text, so errors point at the line to fix."""
    if not text:
        return None
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML: what a run saves next to its results."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def config_schema() -> dict[str, Any]:
    return RunConfig.model_json_schema()
