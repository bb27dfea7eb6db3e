"""Evaluate one model on eval examples: generate once, then compute every configured metric.

An eval example is a prompt (a message list, or a raw string for prompt/completion data) and the reference
answer: the last assistant turn of a conversation, the completion of a prompt/completion record, or the
chosen reply of a preference pair. Raw-text and unpaired-preference records have no reference and are
rejected with the file and record named. Generation runs only when a metric needs outputs.

An `EvalResult` is plain data saved as JSON (examples, outputs, metric results, decoding), so comparisons
and reports can be rebuilt later without the model. In a run directory results live in `eval/`.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tunelab.config import DatasetConfig, EvalConfig, MetricSpec
from tunelab.data.pipeline import load_records
from tunelab.data.prompts import prompt_spec
from tunelab.data.prompts import question_text as spec_text
from tunelab.data.records import Conversation, Preference, PromptCompletion, Record, Text
from tunelab.data.records import Prompt as PromptRecord
from tunelab.data.sources import MAX_RECORD_BYTES
from tunelab.errors import ConfigError, DataError
from tunelab.eval.perplexity import LossResult, answer_loss, load_probe_texts, text_loss
from tunelab.models.generate import DecodingConfig, Prompt, encode_prompt, generate
from tunelab.scoring.metrics import METRICS, MetricResult
from tunelab.scoring.rewards import check_sources

EVAL_DIR = "eval"  # inside a run directory: baseline.json, final.json, comparison.json, forgetting.json
LOSS_METRICS = ("loss", "perplexity")


@dataclass
class EvalExample:
    prompt: Prompt
    reference: str
    source: str = ""  # "file:line" or "file#record", for reports
    task: str = ""  # the dataset's task name; several tasks get per-task metrics ("<task>/<metric>")


@dataclass
class EvalResult:
    model: str
    examples: list[EvalExample]
    predictions: list[str] | None
    metrics: dict[str, MetricResult]
    decoding: dict[str, Any] = field(default_factory=dict)
    prompts: dict[str, Any] = field(default_factory=dict)  # prompt length policy: max_tokens, truncated, dropped

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(
            json.dumps(asdict(self), indent=1, ensure_ascii=False)
        )  # NaN is written as NaN and read back

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(
                model=raw["model"],
                examples=[EvalExample(**e) for e in raw["examples"]],
                predictions=raw["predictions"],
                metrics={k: MetricResult(**v) for k, v in raw["metrics"].items()},
                decoding=raw.get("decoding", {}),
                prompts=raw.get("prompts", {}),
            )
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"not a tunelab eval result ({type(e).__name__}: {e})", where=str(path)) from None


# --------------------------------------------------------------------------- examples


def example_from_record(record: Record, where: str) -> EvalExample:
    if isinstance(record, Conversation):
        last = max((i for i, m in enumerate(record.messages) if m.role == "assistant"), default=None)
        if last is None:
            raise DataError("conversation has no assistant turn to use as the reference answer", where=where)
        prompt = [{"role": m.role, "content": m.content} for m in record.messages[:last]]
        return EvalExample(prompt, record.messages[last].content, where)
    if isinstance(record, PromptCompletion):
        return EvalExample(record.prompt, record.completion, where)
    if isinstance(record, Text):  # continued pretraining data: the loss/perplexity of the whole text
        return EvalExample("", record.text, where)
    if isinstance(record, Preference):
        prompt = [{"role": m.role, "content": m.content} for m in record.prompt]
        return EvalExample(prompt, record.chosen[-1].content, where)
    if isinstance(record, PromptRecord):  # grpo prompts: no reference, so only reference-free metrics (judge, reward)
        return EvalExample([{"role": m.role, "content": m.content} for m in record.messages], "", where)
    raise DataError(f"{type(record).__name__} records have no reference answer to evaluate against "
                    "(use messages, alpaca, sharegpt, prompt_completion or preference data)", where=where)  # fmt: skip


def load_examples(ds: DatasetConfig, max_record_bytes: int = MAX_RECORD_BYTES) -> list[EvalExample]:
    """Eval examples of one dataset (read with the same sources and formats as training, and the same
    data.max_record_bytes), tagged with its task."""

    _, recs = load_records(ds, max_record_bytes)
    out = []
    for record, row in recs:
        where = f"{row.source}:{row.line}" if row.line else f"{row.source}#{row.index}"
        ex = example_from_record(record, where)
        ex.task = ds.task_name()
        out.append(ex)
    return out


# --------------------------------------------------------------------------- evaluation


def decoding_from(cfg: EvalConfig, chat_template: str | None = None) -> DecodingConfig:
    return DecodingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          seed=cfg.seed, batch_size=cfg.batch_size, chat_template=chat_template)  # fmt: skip


def metric_options(spec: MetricSpec, cfg: EvalConfig) -> dict[str, Any]:
    """A metric's keyword options; classification starts from eval.extract. Unknown options are errors."""
    options = dict(spec.options)
    if spec.name == "classification":
        options = {**cfg.extract.model_dump(), **options}
    fn = METRICS.get(spec.name)
    if fn is not None:
        allowed = [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(f"eval.metrics: {spec.name} has no option {', '.join(map(repr, unknown))}; "
                              f"its options are: {', '.join(allowed) or 'none'}")  # fmt: skip
    elif options:
        raise ConfigError(f"eval.metrics: {spec.name} takes no options here (configure it under eval.*)")
    return options


def check_reward_sources(cfg: EvalConfig) -> None:

    if not cfg.rewards:
        raise ConfigError("eval.metrics reward: no reward sources; set eval.rewards, e.g. [{function: parity}]")
    check_sources(cfg.rewards)


def question_text(prompt: Prompt) -> str:
    """What a judge is shown as the question: the raw prompt, or the conversation as 'role: content' lines
    (the same text a reward source sees, tunelab.data.prompts.question_text)."""
    return spec_text(prompt_spec(prompt))


def evaluate(model: Any, tokenizer: Any, examples: Sequence[EvalExample], cfg: EvalConfig, *, name: str = "model",
             chat_template: str | None = None, max_length: int = 1024, progress: bool = True,
             task_metrics: dict[str, list[MetricSpec]] | None = None, truncation: str = "truncate") -> EvalResult:  # fmt: skip
    """Every metric on `examples`; outputs are generated once and shared by all metrics.

    Examples of one task get `cfg.metrics` under their plain names. With several tasks (EvalExample.task),
    each task gets its own metrics (`task_metrics[task]`, else cfg.metrics) under "<task>/<metric>", with
    per-example scores spread over all examples (NaN outside the task) so comparisons stay paired by index.
    Prompts longer than `max_length` tokens follow training's policy (data.truncation): generation keeps their
    end (truncate) or they are left out (drop); both are counted in the result's `prompts`."""
    if not examples:
        raise DataError("no eval examples (set data.eval or data.eval_ratio)")
    examples, prompts = prompt_policy(tokenizer, examples, chat_template, max_length, truncation)
    if not examples:
        raise DataError(f"every eval prompt is longer than data.max_length ({max_length} tokens) and "
                        "data.truncation is drop")  # fmt: skip
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.task, []).append(i)
    specs = {t: (task_metrics or {}).get(t) or cfg.metric_specs() for t in groups}
    for t_specs in specs.values():
        for spec in t_specs:
            metric_options(spec, cfg)  # fail on bad options or reward sources before generating
            if spec.name == "reward":
                check_reward_sources(cfg)
    decoding = replace(decoding_from(cfg, chat_template), max_prompt_tokens=max_length)
    needs_outputs = [i for t, idx in groups.items() if any(s.name not in LOSS_METRICS for s in specs[t]) for i in idx]
    predictions = None
    if needs_outputs:  # examples of loss-only tasks keep "" (nothing was generated for them)
        outputs = generate(model, tokenizer, [examples[i].prompt for i in needs_outputs], decoding, progress=progress)
        predictions = [""] * len(examples)
        for i, out in zip(needs_outputs, outputs):
            predictions[i] = out
    results: dict[str, MetricResult] = {}
    for task, idx in groups.items():
        subset = [examples[i] for i in idx]
        preds = [predictions[i] for i in idx] if predictions is not None else None
        for key, r in _task_metrics(model, tokenizer, subset, preds, specs[task], cfg, chat_template, max_length,
                                    progress).items():  # fmt: skip
            if len(groups) == 1:
                results[key] = r
            else:
                results[f"{task}/{key}"] = _spread(r, task, idx, len(examples))
    dec = asdict(decoding) if predictions is not None else {}
    return EvalResult(name, list(examples), predictions, results, dec, prompts)


def prompt_policy(tokenizer: Any, examples: Sequence[EvalExample], chat_template: str | None, max_length: int,
                  truncation: str) -> tuple[list[EvalExample], dict[str, Any]]:  # fmt: skip
    """(the examples evaluated, counts): prompts over `max_length` tokens are counted, and left out for drop."""
    long = [i for i, ex in enumerate(examples)
            if len(encode_prompt(tokenizer, ex.prompt, chat_template)) > max_length]  # fmt: skip
    info: dict[str, Any] = {"max_tokens": max_length, "policy": truncation, "longer": len(long)}
    if truncation == "drop":
        info["dropped"] = [examples[i].source for i in long]
        gone = set(long)
        return [ex for i, ex in enumerate(examples) if i not in gone], info
    return list(examples), info | {"truncated": len(long)}


def _task_metrics(model: Any, tokenizer: Any, examples: list[EvalExample], predictions: list[str] | None,
                  specs: list[MetricSpec], cfg: EvalConfig, chat_template: str | None, max_length: int,
                  progress: bool) -> dict[str, MetricResult]:  # fmt: skip
    prompts = [e.prompt for e in examples]
    refs = [e.reference for e in examples]
    results: dict[str, MetricResult] = {}
    for spec in specs:
        if spec.name in LOSS_METRICS:
            results[spec.name] = answer_loss(model, tokenizer, prompts, refs, batch_size=cfg.batch_size,
                                             max_length=max_length, chat_template=chat_template,
                                             progress=progress).metric(spec.name)  # fmt: skip
        elif spec.name == "judge":
            from tunelab.scoring.judge import Judge

            assert predictions is not None
            results["judge"] = Judge(cfg.judge).score_all([question_text(p) for p in prompts], predictions, refs)
        elif spec.name == "reward":
            from tunelab.scoring.rewards import reward_metric

            assert predictions is not None
            device = next(model.parameters()).device
            results["reward"] = reward_metric(cfg.rewards, prompts, predictions, device)
        else:
            assert predictions is not None
            results[spec.name] = METRICS[spec.name](predictions, refs, **metric_options(spec, cfg))
    return results


def _spread(r: MetricResult, task: str, idx: list[int], n: int) -> MetricResult:
    """A task's metric over all n examples: its per-example scores at the task's indices, NaN elsewhere."""
    per: dict[str, list[float]] = {}
    for key, values in r.per_example.items():
        full = [math.nan] * n
        for i, v in zip(idx, values):
            full[i] = v
        per[key] = full
    return MetricResult(f"{task}/{r.name}", r.scores, per, {**r.details, "task": task, "examples": len(idx)})


def forgetting_probe(model: Any, tokenizer: Any, cfg: EvalConfig, progress: bool = True) -> LossResult:
    """Perplexity on the general-text probe set (eval.forgetting.texts, or the shipped default)."""
    texts = load_probe_texts(cfg.forgetting.texts)
    return text_loss(model, tokenizer, texts, batch_size=cfg.batch_size, max_length=cfg.forgetting.max_length,
                     progress=progress)  # fmt: skip
