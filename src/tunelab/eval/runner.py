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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import DatasetConfig, EvalConfig, MetricSpec
from tunelab.data.records import Conversation, Preference, PromptCompletion, Record, Text
from tunelab.data.records import Prompt as PromptRecord
from tunelab.errors import ConfigError, DataError
from tunelab.eval.generate import DecodingConfig, Prompt, generate
from tunelab.eval.metrics import METRICS, MetricResult
from tunelab.eval.perplexity import LossResult, answer_loss, load_probe_texts, text_loss

EVAL_DIR = "eval"  # inside a run directory: baseline.json, final.json, comparison.json, forgetting.json
LOSS_METRICS = ("loss", "perplexity")


@dataclass
class EvalExample:
    prompt: Prompt
    reference: str
    source: str = ""  # "file:line" or "file#record", for reports


@dataclass
class EvalResult:
    model: str
    examples: list[EvalExample]
    predictions: list[str] | None
    metrics: dict[str, MetricResult]
    decoding: dict[str, Any] = field(default_factory=dict)

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
            )
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
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
    if isinstance(record, PromptRecord):  # grpo prompts: no reference, so only reference-free metrics (judge) mean much
        return EvalExample([{"role": m.role, "content": m.content} for m in record.messages], "", where)
    raise DataError(f"{type(record).__name__} records have no reference answer to evaluate against "
                    "(use messages, alpaca, sharegpt, prompt_completion or preference data)", where=where)  # fmt: skip


def load_examples(ds: DatasetConfig) -> list[EvalExample]:
    """Eval examples of one dataset (read with the same sources and formats as training)."""
    from tunelab.data.pipeline import load_records

    _, recs = load_records(ds)
    out = []
    for record, row in recs:
        where = f"{row.source}:{row.line}" if row.line else f"{row.source}#{row.index}"
        out.append(example_from_record(record, where))
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


def question_text(prompt: Prompt) -> str:
    """What a judge is shown as the question: the raw prompt, or the conversation as 'role: content' lines."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def evaluate(model: Any, tokenizer: Any, examples: Sequence[EvalExample], cfg: EvalConfig, *, name: str = "model",
             chat_template: str | None = None, max_length: int = 1024, progress: bool = True) -> EvalResult:  # fmt: skip
    """Every metric of `cfg.metrics` on `examples`; outputs are generated once and shared by all metrics."""
    if not examples:
        raise DataError("no eval examples (set data.eval or data.eval_ratio)")
    specs = cfg.metric_specs()
    options = {s.name: metric_options(s, cfg) for s in specs}  # fail on bad options before generating
    prompts = [e.prompt for e in examples]
    refs = [e.reference for e in examples]
    decoding = decoding_from(cfg, chat_template)
    predictions = None
    if any(s.name not in LOSS_METRICS for s in specs):
        predictions = generate(model, tokenizer, prompts, decoding, progress=progress)
    results: dict[str, MetricResult] = {}
    for spec in specs:
        if spec.name in LOSS_METRICS:
            results[spec.name] = answer_loss(model, tokenizer, prompts, refs, batch_size=cfg.batch_size,
                                             max_length=max_length, chat_template=chat_template,
                                             progress=progress).metric(spec.name)  # fmt: skip
        elif spec.name == "judge":
            from tunelab.eval.judge import Judge

            assert predictions is not None
            results["judge"] = Judge(cfg.judge).score_all([question_text(p) for p in prompts], predictions, refs)
        else:
            assert predictions is not None
            results[spec.name] = METRICS[spec.name](predictions, refs, **options[spec.name])
    dec = asdict(decoding) if predictions is not None else {}
    return EvalResult(name, list(examples), predictions, results, dec)


def forgetting_probe(model: Any, tokenizer: Any, cfg: EvalConfig, progress: bool = True) -> LossResult:
    """Perplexity on the general-text probe set (eval.forgetting.texts, or the shipped default)."""
    texts = load_probe_texts(cfg.forgetting.texts)
    return text_loss(model, tokenizer, texts, batch_size=cfg.batch_size, max_length=cfg.forgetting.max_length,
                     progress=progress)  # fmt: skip
