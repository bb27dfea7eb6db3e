"""The Python API, the product the CLI is a thin veneer over: load_config, validate, train, evaluate, compare,
report, export, verify, generate, stream (chat), create_app and serve.

`train` works the same in one process and under `accelerate launch` (tunelab.train.run); what a run directory
holds is described in tunelab.train.rundir. Anything that takes a model takes any name tunelab.models.loader
understands: a preset, a model folder, a hub id, a run directory or its final/, an adapter folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelab import config
from tunelab.config import RunConfig
from tunelab.data import preview
from tunelab.eval import targets
from tunelab.eval.report import report_run
from tunelab.eval.runner import EvalResult
from tunelab.export import exporters
from tunelab.export.verify import verify as verify_export
from tunelab.methods import METHODS, check_run
from tunelab.models import generate as gen
from tunelab.models.generate import DecodingConfig
from tunelab.models.load import load_tokenizer
from tunelab.models.loader import is_run_dir, load
from tunelab.planner import DataCounts, Estimate, estimate
from tunelab.quality.check import check as check_data
from tunelab.serve import runtime
from tunelab.serve.config import ServeConfig
from tunelab.stages import run_stages
from tunelab.train.loop import Hooks, TrainingInterrupted
from tunelab.train.run import train_one

__all__ = ["Hooks", "TrainingInterrupted", "compare", "create_app", "debug_examples", "evaluate", "export", "generate",
           "load_config", "load_generator", "plan", "report", "serve", "stream", "train", "validate", "verify"]  # fmt: skip


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The run config from YAML plus `a.b=c` overrides, with the checks that depend on a method's facts."""
    return check_run(config.load_config(path, overrides))


def train(
    cfg: RunConfig, resume: bool = False, hooks: Hooks | None = None, config_path: str | Path | None = None
) -> Path:
    """Train per `cfg`; returns the run directory (with final/). Raises TrainingInterrupted on Ctrl-C or SIGTERM.
    With `stages:`, runs them in order (tunelab.stages) and returns the last stage's run directory."""
    if cfg.stages:
        return run_stages(cfg, config_path, resume)[-1]
    return train_one(cfg, resume, hooks, config_path)


def validate(cfg: RunConfig, tokenizer: Any = None) -> dict[str, Any]:
    """Build the whole data pipeline of `cfg` without training: counts and problems (`tunelab validate`), and
    what the pre-flight data check (data.check: labels, leakage, duplicates, ...) would find."""
    tokenizer = tokenizer or load_tokenizer(cfg.model)
    report = preview.validate(cfg, tokenizer, METHODS[cfg.method.name].data)
    if cfg.data.check is not None:
        found = check_data(cfg.data.train, [*cfg.data.eval, *cfg.eval.data], options=cfg.data.check,
                           tokenizer=tokenizer, max_record_bytes=cfg.data.max_record_bytes)  # fmt: skip
        report["data_check"] = {"errors": len(found.errors), "warnings": len(found.by_severity("warning")),
                                "problems": [{"severity": p.severity, "code": p.code, "message": p.message}
                                             for p in found.problems if p.severity != "info"]}  # fmt: skip
    return report


def plan(cfg: RunConfig, device: str | None = None, price_per_hour: float | None = None,
         calibrate: bool = False) -> Estimate:  # fmt: skip
    """Peak memory, time and cost of training `cfg` (tunelab.planner), from the data pipeline's own counts
    (`validate`); `device` names a row of tunelab.planner.DEVICES (default: this machine), `calibrate` measures
    this machine's throughput with a short run instead of assuming it."""
    counts = DataCounts.from_report(validate(cfg), cfg.data.max_length)
    return estimate(cfg, counts, device, price_per_hour, calibrate)


def debug_examples(cfg: RunConfig, n: int, tokenizer: Any = None) -> list[tuple[str, str, Any]]:
    """The first n training records token by token (`tunelab prepare --debug N`)."""
    return preview.debug_examples(cfg, tokenizer or load_tokenizer(cfg.model), n, METHODS[cfg.method.name].data)


# ----------------------------------------------------------------------------------------- evaluation


def resolve_config(target: str, path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The settings to evaluate `target` with: `path`, else a run directory's own config.yaml, else defaults."""
    if path is None and is_run_dir(target):
        path = str(Path(target) / "config.yaml")
    return load_config(path, overrides)


def evaluate(target: str, data: list[str] | None = None, config_path: str | None = None,
             overrides: list[str] | tuple[str, ...] = (), out: Path | None = None) -> tuple[EvalResult, Path]:  # fmt: skip
    """Generate on the eval data and score it (eval.metrics); the result is saved to `out` (default
    RUN/eval/final.json or ./eval-NAME.json). Returns (result, path)."""
    cfg = resolve_config(target, config_path, overrides)
    result, _ = targets.evaluate_target(target, cfg, data)
    path = out or targets.default_result_path(target, result)
    result.save(path)
    return result, path


def compare(a: str, b: str, data: list[str] | None = None, config_path: str | None = None,
            overrides: list[str] | tuple[str, ...] = (), out: Path = Path("compare")) -> targets.Comparison:  # fmt: skip
    """A vs B on the same data and decoding: paired-bootstrap diffs, flipped examples, forgetting, a report."""
    return targets.compare_targets(a, b, resolve_config(b, config_path, overrides), data, out)


def report(run: str | Path) -> tuple[Path, Path]:
    """Regenerate report.md and report.html of a run (or a compare folder) from what it saved."""
    return report_run(run)


# ----------------------------------------------------------------------------------------- export and serving


def export(source: str | Path, fmt: str = "merged", out: str | Path | None = None, qtype: str = "f16",
           **options: Any) -> Path:  # fmt: skip
    """Write RUN as hf (as trained), merged (LoRA folded in) or gguf (`options`: converter, llama_cpp, modelfile;
    see tunelab.export.exporters.export); returns the export folder."""
    return exporters.export(source, fmt, out, qtype=qtype, **options)


def verify(export_dir: str | Path, against: str | Path, prompts: list[str] | None = None,
           max_new_tokens: int = 32, record: bool = True) -> Any:  # fmt: skip
    """Prove an export matches its run (logit differences, greedy agreement); raises VerifyError beyond tolerance.
    `record` saves EXPORT/verify.json and refreshes the export's model card."""
    return verify_export(export_dir, against, prompts, max_new_tokens, record=record)


def create_app(target: str | Path, cfg: ServeConfig | None = None, adapters: dict[str, str] | None = None) -> Any:
    """The OpenAI-compatible FastAPI app serving `target` and its adapters (run it with any ASGI server)."""
    cfg = cfg or ServeConfig()
    return runtime.build_app(runtime.build_engine(target, cfg, adapters), cfg)


def serve(target: str, cfg: ServeConfig | None = None, adapters: dict[str, str] | None = None) -> None:
    """Load and serve until interrupted (`tunelab serve`)."""
    runtime.serve(target, cfg or ServeConfig(), adapters)


# ----------------------------------------------------------------------------------------- generation


def load_generator(run_or_model: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a run directory, a preset name or a model folder; eval mode."""
    return load(run_or_model, purpose="generate")


def generate(
    run_or_model: str | Path | tuple[Any, Any],
    prompt: str | None = None,
    messages: list[dict[str, str]] | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    chat: bool | None = None,
) -> str:
    """The model's continuation (new tokens only, special tokens skipped); greedy unless temperature > 0.
    A prompt becomes one user turn when the model has a chat template (unless chat=False)."""
    model, tok = run_or_model if isinstance(run_or_model, tuple) else load_generator(run_or_model)
    decoding = DecodingConfig(max_new_tokens, temperature, top_p, seed, batch_size=1)
    return gen.generate(model, tok, [gen.single_prompt(tok, prompt, messages, chat)], decoding, progress=False)[0]


def stream(model: Any, tok: Any, messages: list[dict[str, str]], max_new_tokens: int = 256,
           temperature: float = 0.0) -> Iterator[str]:  # fmt: skip
    """Yield text pieces of the reply to `messages` as they are generated (`tunelab chat`)."""
    prompt = gen.single_prompt(tok, None, messages, True)
    return gen.stream(model, tok, prompt, DecodingConfig(max_new_tokens, temperature, batch_size=1))


def train_from_file(path: str | Path, overrides: list[str] | tuple[str, ...] = (), resume: bool = False) -> Path:
    return train(load_config(path, overrides), resume=resume, config_path=path)
