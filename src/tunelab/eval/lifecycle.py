"""Evaluation around a training run: the base model before, the result after, and the verdict.

`before_training` (not called on resume: a resumed run keeps its baseline) runs on the base model (before any
adapter or virtual token exists) and saves RUN/eval/baseline.json and the forgetting probe; `after_training`
evaluates the trained model on the same examples with the same decoding, compares (paired bootstrap), runs the
forgetting check and writes the report. The forgetting check has no verdict ("not applicable") when the base
model is a randomly initialised preset or was trained from one: it never learned general text. Both run on the
main process only. The eval examples are `eval.data`, else `data.eval`.
Head methods (classify, ner, reward) are scored by their head instead: tunelab.eval.heads. Preference methods
(`reward`: their implicit reward's kind and beta, from the method's registry entry) also get held-out preference
accuracy and reward margins before and after (tunelab.eval.preference), compared like any other metric.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tunelab.config import MetricSpec, RunConfig, eval_settings, metric_specs
from tunelab.errors import TunelabError
from tunelab.eval import heads
from tunelab.eval import preference as pref
from tunelab.eval.compare import compare_results
from tunelab.eval.perplexity import LossResult, forgetting_check, forgetting_line, not_applicable_reason
from tunelab.eval.report import report_run
from tunelab.eval.runner import EVAL_DIR, EvalExample, EvalResult, evaluate, forgetting_probe, load_examples

PROBE_BEFORE = "forgetting_before.json"


def eval_examples(cfg: RunConfig) -> list[EvalExample]:
    return [ex for ds in (cfg.eval.data or cfg.data.eval) for ex in load_examples(ds, cfg.data.max_record_bytes)]


def task_metrics(cfg: RunConfig) -> dict[str, list[MetricSpec]]:
    """Per-task metric lists from eval datasets that set `metrics:` (the others use eval.metrics)."""
    return {ds.task_name(): metric_specs(ds.metrics) for ds in (cfg.eval.data or cfg.data.eval) if ds.metrics}


Reward = tuple[str, float]  # a preference method's implicit reward: (kind, beta), tunelab.eval.preference


def before_training(cfg: RunConfig, model: Any, tokenizer: Any, run_dir: Path, log: Any = print,
                    head: str | None = None, reward: Reward | None = None) -> None:  # fmt: skip
    """`head`: the method's task head (seq, token, scalar; tunelab.methods), None for a language model;
    `reward`: a preference method's implicit reward (kind, beta)."""
    if head:
        return heads.before_training(cfg, model, tokenizer, run_dir, head, log)
    out = run_dir / EVAL_DIR
    if out.exists():  # a reused (output.overwrite) run directory: results of the earlier run are stale
        shutil.rmtree(out)
    if not cfg.eval.baseline:
        return
    out.mkdir(parents=True)
    examples = eval_examples(cfg)
    if examples and (cfg.eval.metrics or task_metrics(cfg)):
        log(f"baseline: evaluating the base model on {len(examples)} examples")
        _evaluate(cfg, model, tokenizer, examples, "base").save(out / "baseline.json")
    if reward and cfg.eval.metrics and (res := pref.evaluate_pairs(cfg, model, tokenizer, *reward, "base")):
        pref.save(res, run_dir, pref.BASELINE)
        log(f"baseline: {pref.summary_line(res)}")
    if cfg.eval.forgetting.enabled:
        probe = forgetting_probe(model, tokenizer, cfg.eval, progress=False)
        (out / PROBE_BEFORE).write_text(json.dumps(asdict(probe)))


def after_training(cfg: RunConfig, model: Any, tokenizer: Any, run_dir: Path, log: Any = print,
                   head: str | None = None, reward: Reward | None = None) -> dict[str, Any]:  # fmt: skip
    """Evaluate, compare, check forgetting, write the report; returns a summary for the CLI."""
    if head:
        return heads.after_training(cfg, model, tokenizer, run_dir, head, log)

    out = run_dir / EVAL_DIR
    summary: dict[str, Any] = {}
    examples = eval_examples(cfg)
    if examples and (cfg.eval.metrics or task_metrics(cfg)):
        log(f"final: evaluating the fine-tuned model on {len(examples)} examples")
        final = _evaluate(cfg, model, tokenizer, examples, "fine-tuned")
        final.save(out / "final.json")
        summary["final"] = {k: m.scores for k, m in final.metrics.items()}
        if (out / "baseline.json").is_file():
            cmp = compare_results(EvalResult.load(out / "baseline.json"), final,
                                  n_resamples=cfg.eval.bootstrap_resamples, seed=cfg.eval.seed).to_dict()  # fmt: skip
            (out / "comparison.json").write_text(json.dumps(cmp, indent=1, ensure_ascii=False))
            summary["comparison"] = cmp["rows"]
    if reward and cfg.eval.metrics:
        _preference_after(cfg, model, tokenizer, run_dir, reward, summary, log)
    if cfg.eval.forgetting.enabled and (out / PROBE_BEFORE).is_file():
        log(f"forgetting check: measuring general-text perplexity ({cfg.eval.forgetting.texts or 'general_text'})")
        before = LossResult(**json.loads((out / PROBE_BEFORE).read_text()))
        after = forgetting_probe(model, tokenizer, cfg.eval, progress=False)
        check = forgetting_check(before, after, cfg.eval.forgetting.threshold, cfg.eval.forgetting.texts or
                                 "general_text", not_applicable_reason(cfg.model.name_or_path))  # fmt: skip
        (out / "forgetting.json").write_text(json.dumps(asdict(check), indent=1))
        summary["forgetting"] = asdict(check)
        log(f"forgetting check: {forgetting_line(summary['forgetting'])}")
    summary["report"] = [str(p) for p in report_run(run_dir)]
    if cfg.eval.fail_on_regression and summary.get("forgetting", {}).get("regressed"):
        fg = summary["forgetting"]
        raise TunelabError(f"forgetting check failed: general-text perplexity {fg['before']:.4g} -> {fg['after']:.4g} "
                           f"(+{fg['relative_change']:.0%} > {fg['threshold']:.0%}); see {summary['report'][0]}")  # fmt: skip
    return summary


def _preference_after(cfg: RunConfig, model: Any, tokenizer: Any, run_dir: Path, reward: Reward,
                      summary: dict[str, Any], log: Any) -> None:  # fmt: skip
    """The trained model's preference accuracy and margins, compared with the baseline's."""
    base = pref.load(run_dir, pref.BASELINE)
    if reward[0] == "reference" and base is None:
        log("preference accuracy skipped: the implicit reward needs the base model's log-probs (eval.baseline: true)")
        return
    log("final: scoring the held-out preference pairs")
    final = pref.evaluate_pairs(cfg, model, tokenizer, *reward, "fine-tuned", reference=base)
    if final is None:
        return
    pref.save(final, run_dir, pref.FINAL)
    summary["preference"] = final.metrics["preference"].scores
    log(f"final: {pref.summary_line(final)}")
    if base is not None:
        cmp = compare_results(base, final, n_resamples=cfg.eval.bootstrap_resamples, seed=cfg.eval.seed).to_dict()
        pref.merge_rows(run_dir / EVAL_DIR / "comparison.json", cmp)
        summary["comparison"] = summary.get("comparison", []) + cmp["rows"]


def _evaluate(cfg: RunConfig, model: Any, tokenizer: Any, examples: list[EvalExample], name: str) -> EvalResult:
    was_training = model.training
    model.eval()
    try:
        return evaluate(model, tokenizer, examples, eval_settings(cfg), name=name,
                        chat_template=cfg.model.chat_template, max_length=cfg.data.max_length,
                        task_metrics=task_metrics(cfg), truncation=cfg.data.truncation)  # fmt: skip
    finally:
        model.train(was_training)
