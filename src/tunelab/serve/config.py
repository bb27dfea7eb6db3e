"""The server's configuration: a `serve.yaml` validated into frozen, typed sections.

Kept apart from the run config (`RunConfig`): a run says how a model was trained, this file says how one
deployment exposes it (keys, limits, guard, logging), and one trained run can be served many ways.
Defaults are safe for a laptop: bind 127.0.0.1, guard on in `flag` mode (it records; `block` is opt-in because
pattern matching also hits innocent text), request logging off (it is opt-in because it stores user text, and
what it stores is PII-redacted by default). Without any API key the server refuses to bind a non-loopback
address. `/metrics` and the details of `/health` need an admin key unless made public here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelab.config import load_yaml_model

GuardAction = Literal["off", "flag", "block", "redact"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class AuthConfig(_Section):
    keys_file: str | None = Field(
        None,
        description="File of API keys: `KEY_ID SHA256_HEX` lines (# comments allowed), never plaintext keys.",
    )
    keys_env: str = Field(
        "TUNELAB_API_KEYS",
        description="Env var with `KEY_ID:SHA256_HEX` pairs separated by commas (read at start).",
    )
    admin_key_ids: list[str] = Field(
        default_factory=list, description="Key ids allowed to call /admin endpoints (load/unload adapters)."
    )


class LimitsConfig(_Section):
    requests_per_minute: float = Field(60, gt=0, description="Per-key sustained rate (token bucket refill).")
    burst: int = Field(20, ge=1, description="Per-key bucket size: requests allowed at once after a quiet period.")
    max_body_bytes: int = Field(65536, ge=256, description="Largest request body accepted; larger gets 413.")
    max_tokens: int = Field(512, ge=1, description="Largest max_tokens a request may ask for; larger gets 400.")
    default_max_tokens: int = Field(128, ge=1, description="max_tokens when a request does not set it.")
    max_prompt_tokens: int = Field(2048, ge=1, description="Longest prompt (in tokens) accepted; longer gets 400.")
    request_timeout_s: float = Field(60, gt=0, description="A request still generating after this gets 504.")
    read_timeout_s: float = Field(
        30, gt=0, description="Longest time a request's headers and body may take to arrive; slower gets 408."
    )
    idle_timeout_s: float = Field(
        10, gt=0, description="Longest silence while a request arrives, or between kept-alive requests; then closed."
    )
    max_n: int = Field(8, ge=1, description="Most choices (`n`) one request may ask for.")
    max_prompts: int = Field(16, ge=1, description="Most prompts in one /v1/completions list prompt.")
    drain_timeout_s: float = Field(
        30, ge=0, description="How long unloading an adapter waits for its in-flight requests before ending them."
    )


class BatchConfig(_Section):
    max_batch_size: int = Field(16, ge=1, description="Rows (choices) decoded together in one forward pass.")
    wait_ms: float = Field(
        5, ge=0, description="When idle, how long the first request waits for others to share its prefill."
    )
    extra_slots: int | None = Field(
        None, ge=0, description="Rows above max_batch_size for keys under their fair share (default max_batch_size/4)."
    )
    max_prefill_tokens: int = Field(
        8192, ge=1, description="Most prompt tokens prefilled per decode step (at least one request always joins)."
    )


class ClassifierConfig(_Section):
    model: str = Field(description="Local folder of a transformers sequence-classification model (never downloaded).")
    labels: list[str] = Field(
        default_factory=lambda: ["INJECTION", "JAILBREAK", "LABEL_1"],
        description="Labels that mean an attack (those present in the model's id2label are used).",
    )
    threshold: float = Field(0.5, gt=0, le=1, description="Attack probability at or above which the input is hit.")
    max_length: int = Field(512, ge=8, description="Tokens of the input the classifier reads (the end is cut).")


class GuardConfig(_Section):
    injection: GuardAction = Field(
        "flag", description="Prompt-injection/jailbreak patterns in the input (`block` is opt-in)."
    )
    injection_patterns: list[str] = Field(
        default_factory=list,
        description="Extra regexes (case-insensitive) added to the built-in injection patterns.",
    )
    pii_input: GuardAction = Field(
        "redact",
        description="PII (email, phone, card, IBAN, IP, secrets, street addresses, marked names) in the input.",
    )
    pii_output: GuardAction = Field("redact", description="PII in the model's output.")
    pii_kinds: list[str] | None = Field(None, description="PII kinds to check (default: all of tunelab.quality.pii).")
    blocklist: list[str] = Field(default_factory=list, description="Words/phrases (case-insensitive, whole words).")
    blocklist_action: GuardAction = Field("block", description="What to do when input or output has a blocked term.")
    classifier: ClassifierConfig | None = Field(
        None, description="Optional prompt-injection classifier run beside the patterns (same `injection` action)."
    )
    stream_hold_chars: int = Field(
        64, ge=0, description="Characters streamed output is held back so a redaction never takes back sent text."
    )


class StoreConfig(_Section):
    enabled: bool = Field(False, description="Record requests, responses, guard decisions and feedback (opt-in).")
    url: str | None = Field(
        None,
        description="Database URL (sqlite:///x.db, postgresql+psycopg://...); default TUNELAB_HOME/serve.db",
    )
    redact_pii: bool = Field(True, description="Redact PII in every stored field, whatever the model was shown.")
    retries: int = Field(5, ge=0, description="Retries of a failed write (locked database, lost connection).")
    busy_timeout_ms: int = Field(5000, ge=0, description="SQLite: how long a write waits for a lock before failing.")


class ServeConfig(_Section):
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0 picks a free one).")
    base_name: str | None = Field(None, description="Model id of the base model in /v1/models (default: 'base').")
    adapters: dict[str, str] = Field(default_factory=dict, description="LoRA adapters to load at start: NAME: PATH.")
    adapter_dirs: list[str] = Field(
        default_factory=list,
        description="Folders /admin may load adapters from; paths elsewhere are refused.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Weights dtype.")
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads for torch (default: torch's choice; 1 is fastest for tiny models).",
    )
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Rate, size, token and time limits.")
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Dynamic batching of concurrent requests.")
    guard: GuardConfig = Field(default_factory=GuardConfig, description="Input/output checks.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="Request and feedback logging.")
    public_metrics: bool = Field(False, description="Serve /metrics without an admin key (it names key ids).")
    public_health: bool = Field(
        False, description="Show /health details (models, in-flight, store) without an admin key."
    )


def load_serve_config(path: str | Path | None) -> ServeConfig:
    """serve.yaml -> ServeConfig (defaults when path is None); errors name the file, line and key."""
    return load_yaml_model(ServeConfig, path, expected="host, port, auth, limits, guard, store, ...")
