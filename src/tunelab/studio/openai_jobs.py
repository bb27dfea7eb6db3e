"""OpenAI's fine-tuning job fields -> a tunelab run config, and queue rows -> OpenAI's objects.

A job trains an adapter (jobs.defaults' tuning: lora or dora) on the server's own base model, so that its
`fine_tuned_model` (`ft:BASE:SUFFIX:ID`) can be served beside the base the moment it succeeds.
docs/openai-migration.md lists every field and what becomes of it; what tunelab does not do (reinforcement
fine-tuning, integrations) is refused with a 400 that says so, never ignored.
"""

from __future__ import annotations

import copy
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelab.config import ModelConfig, RunConfig, dump_config
from tunelab.errors import ConfigError
from tunelab.methods import check_run
from tunelab.studio.config import JOB_DEFAULTS

Auto = Literal["auto"]
ADAPTER_MODES = ("lora", "dora")  # what the server can load beside its base at once
SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # no ".": the name becomes a peft adapter name


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hyperparameters(_Body):
    batch_size: Auto | Annotated[int, Field(ge=1)] | None = None
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0)] | None = None
    n_epochs: Auto | Annotated[int, Field(ge=1)] | None = None


class DpoHyperparameters(Hyperparameters):
    beta: Auto | Annotated[float, Field(gt=0)] | None = None


class Supervised(_Body):
    hyperparameters: Hyperparameters | None = None


class Dpo(_Body):
    hyperparameters: DpoHyperparameters | None = None


class Method(_Body):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    reinforcement: dict[str, Any] | None = None


class JobRequest(_Body):
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None


def refusals(req: JobRequest) -> tuple[str, str] | None:
    """(param, message) for what tunelab does not do, or None."""
    if req.method is not None and req.method.type == "reinforcement":
        return "method.type", ("method.type reinforcement: not supported by tunelab's jobs API; tunelab trains "
                               "GRPO from a run config (method: grpo) submitted to the studio instead")  # fmt: skip
    if req.integrations:
        return "integrations", ("integrations: not supported; set train.trackers (wandb, mlflow, tensorboard) "
                                "in the studio's jobs.defaults instead")  # fmt: skip
    if req.suffix is not None and not SUFFIX.match(req.suffix):
        return "suffix", "suffix: expected 1 to 64 letters, digits, '_' or '-'"
    if req.metadata and (len(req.metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in req.metadata.items())):
        return "metadata", "metadata: at most 16 pairs, keys up to 64 characters, values up to 512"
    return None


def method_type(req: JobRequest) -> str:
    return req.method.type if req.method is not None else "supervised"


def hyperparameters(req: JobRequest) -> Hyperparameters | DpoHyperparameters:
    """The method's hyperparameters, else the top-level (deprecated) ones, else all auto."""
    m = req.method
    inner: Hyperparameters | None = None
    if m is not None and m.type == "dpo" and m.dpo is not None:
        inner = m.dpo.hyperparameters
    elif m is not None and m.type == "supervised" and m.supervised is not None:
        inner = m.supervised.hyperparameters
    return inner or req.hyperparameters or (DpoHyperparameters() if method_type(req) == "dpo" else Hyperparameters())


def build_config(req: JobRequest, base: ModelConfig, defaults: dict[str, Any], train: tuple[str, str],
                 valid: tuple[str, str] | None, runs_dir: str, job_id: str) -> RunConfig:  # fmt: skip
    """The run config of a job: jobs.defaults, the base model, the files ((path, format) each) and the
    request's hyperparameters. Raises ConfigError naming the request field."""
    raw = merged(JOB_DEFAULTS, defaults)
    raw["model"] = base.model_dump()
    data = raw.setdefault("data", {})
    data["train"] = [{"path": train[0], "format": train[1]}]
    data["eval"] = [{"path": valid[0], "format": valid[1]}] if valid else []
    kind = method_type(req)
    raw.setdefault("method", {})["name"] = "dpo" if kind == "dpo" else "sft"
    hp = hyperparameters(req)
    t = raw.setdefault("train", {})
    if isinstance(hp.n_epochs, int):
        t["epochs"] = hp.n_epochs
    if isinstance(hp.batch_size, int):
        t["batch_size"] = hp.batch_size
    if isinstance(hp.learning_rate_multiplier, float | int):
        t["lr"] = float(t.get("lr", RunConfig().train.lr)) * float(hp.learning_rate_multiplier)
    beta = getattr(hp, "beta", None)
    if isinstance(beta, float | int):
        raw["method"].setdefault("dpo", {})["beta"] = float(beta)
    if req.seed is not None:
        t["seed"] = req.seed
    raw["output"] = {"dir": runs_dir, "name": job_id}
    try:
        cfg = check_run(RunConfig.model_validate(raw))
    except ValueError as e:
        raise ConfigError(f"jobs.defaults with this job's fields is not a valid run config: {e}") from None
    if cfg.tuning.mode not in ADAPTER_MODES:
        raise ConfigError(f"jobs.defaults tuning.mode {cfg.tuning.mode!r}: OpenAI-style jobs train an adapter the "
                          f"server can load at once ({' or '.join(ADAPTER_MODES)})")  # fmt: skip
    return cfg


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `base`, section by section (a value that is not a mapping replaces)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def resolved(req: JobRequest, cfg: RunConfig) -> dict[str, Any]:
    """What the job object reports: the values that train (auto resolved), OpenAI's shape."""
    mult = hyperparameters(req).learning_rate_multiplier
    hp: dict[str, Any] = {
        "batch_size": cfg.train.batch_size,
        "learning_rate_multiplier": float(mult) if isinstance(mult, float | int) else 1.0,
        "n_epochs": int(cfg.train.epochs) if float(cfg.train.epochs).is_integer() else cfg.train.epochs,
    }
    kind = method_type(req)
    method: dict[str, Any] = {"type": kind, kind: {"hyperparameters": dict(hp)}}
    if kind == "dpo":
        method["dpo"]["hyperparameters"]["beta"] = cfg.method.dpo.beta
    return {
        "training_file": req.training_file, "validation_file": req.validation_file, "suffix": req.suffix,
        "seed": cfg.train.seed, "hyperparameters": hp, "method": method, "metadata": req.metadata,
        "learning_rate": cfg.train.lr,
    }  # fmt: skip


def fine_tuned_name(base: str, suffix: str | None, job_id: str) -> str:
    """`ft:BASE:SUFFIX:ID` (a "." in the base id becomes "_": peft adapter names cannot hold one)."""
    return f"ft:{base.replace('.', '_')}:{suffix or ''}:{job_id.rsplit('-', 1)[-1][:8]}"


def config_text(cfg: RunConfig) -> str:
    return dump_config(cfg)


# ---------------------------------------------------------------------------------- rows -> OpenAI objects


def job_object(row: dict[str, Any]) -> dict[str, Any]:
    req = row["request"] or {}
    return {
        "object": "fine_tuning.job", "id": row["id"], "model": row["model"], "created_at": int(row["created_at"]),
        "finished_at": _int(row["finished_at"]), "fine_tuned_model": row["fine_tuned_model"],
        "organization_id": "tunelab", "result_files": list(row["result_files"] or []), "status": row["status"],
        "training_file": req.get("training_file", ""), "validation_file": req.get("validation_file"),
        "hyperparameters": req.get("hyperparameters", {}), "method": req.get("method"),
        "trained_tokens": row["trained_tokens"], "error": row["error"], "user_provided_suffix": req.get("suffix"),
        "seed": req.get("seed", 0), "estimated_finish": None, "integrations": [], "metadata": req.get("metadata"),
    }  # fmt: skip


def event_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"object": "fine_tuning.job.event", "id": f"ftevent-{row['seq']}", "created_at": int(row["created_at"]),
            "level": row["level"], "message": row["message"], "data": row["data"], "type": row["type"]}  # fmt: skip


def checkpoint_object(row: dict[str, Any], fine_tuned_model: str) -> dict[str, Any]:
    m = row["metrics"] or {}
    keep = ("step", "train_loss", "valid_loss", "full_valid_loss")
    return {
        "object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{row['id']}", "created_at": int(row["created_at"]),
        "fine_tuned_model_checkpoint": f"{fine_tuned_model}:ckpt-step-{row['step']}",
        "fine_tuning_job_id": row["job_id"], "step_number": row["step"],
        "metrics": {k: m[k] for k in keep if isinstance(m.get(k), int | float)},
    }  # fmt: skip


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"object": "file", "id": row["id"], "bytes": row["bytes"], "created_at": int(row["created_at"]),
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed",
            "status_details": None, "expires_at": None}  # fmt: skip


def _int(x: float | None) -> int | None:
    return None if x is None else int(x)
