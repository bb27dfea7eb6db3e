"""Evaluate and compare models by name: what `tunelab eval` and `tunelab compare` (and tunelab.api) run.

A TARGET is a run directory (config.yaml + final/), a model folder, a preset name or, for compare, a saved eval
result (.json). A head model (classify, ner, reward) is scored by its head (tunelab.eval.heads.rescore). The eval data is the given files, else the config's data.eval. Everything written is plain JSON
next to a report, so `tunelab report` can regenerate pages without a model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import DatasetConfig, RunConfig, eval_settings
from tunelab.errors import ConfigError
from tunelab.eval import heads
from tunelab.eval.compare import compare_results, pairwise_row
from tunelab.eval.perplexity import LossResult, forgetting_check, not_applicable_reason
from tunelab.eval.report import ReportData, add_result, write_report
from tunelab.eval.runner import EvalResult, evaluate, forgetting_probe, load_examples, question_text
from tunelab.models.heads import read_head_info
from tunelab.models.loader import is_run_dir, load, run_of
from tunelab.scoring.judge import Judge


def eval_datasets(cfg: RunConfig, data: list[str] | None) -> list[DatasetConfig]:
    sets = [DatasetConfig(path=p, split="test") if Path(p).is_dir() else DatasetConfig(path=p) for p in data or []]
    sets = sets or list(cfg.data.eval)
    if not sets:
        raise ConfigError("no eval data: pass --data FILE or set data.eval in the config")
    return sets


def evaluate_target(target: str, cfg: RunConfig, data: list[str] | None = None,
                    probe: bool = False) -> tuple[EvalResult, LossResult | None]:  # fmt: skip
    """(result, forgetting-probe loss or None) of one model, loaded once."""
    if (info := read_head_info(target)) is not None:  # classify, ner, reward: scored by the head, not generation
        model, tok = load(target, like=None if run_of(target) else cfg.model)
        return heads.rescore(cfg, model, tok, eval_datasets(cfg, data), info, Path(target).name or target), None
    examples = [ex for ds in eval_datasets(cfg, data) for ex in load_examples(ds, cfg.data.max_record_bytes)]
    model, tok = load(target, like=None if run_of(target) else cfg.model, purpose="eval")
    result = evaluate(model, tok, examples, eval_settings(cfg), name=Path(target).name or target,
                      chat_template=cfg.model.chat_template, max_length=cfg.data.max_length,
                      truncation=cfg.data.truncation)  # fmt: skip
    return result, (forgetting_probe(model, tok, cfg.eval) if probe else None)


def default_result_path(target: str, result: EvalResult) -> Path:
    return Path(target) / "eval" / "final.json" if is_run_dir(target) else Path(f"eval-{result.model}.json")


@dataclass
class Comparison:
    comparison: dict[str, Any]
    forgetting: dict[str, Any] | None
    report: list[Path] = field(default_factory=list)  # report.md, report.html


def compare_targets(a: str, b: str, cfg: RunConfig, data: list[str] | None, out: Path) -> Comparison:
    """Evaluate A and B on the same data with the same decoding (or read saved results); diff with paired
    bootstrap CIs, the judge's pairwise verdict when asked, the forgetting check; results and report in `out`."""
    (ra, probe_a), (rb, probe_b) = _result_or_eval(a, cfg, data), _result_or_eval(b, cfg, data)
    if ra.model == rb.model:
        ra.model, rb.model = f"A:{ra.model}", f"B:{rb.model}"
    cmp = compare_results(ra, rb, n_resamples=cfg.eval.bootstrap_resamples, seed=cfg.eval.seed)
    out.mkdir(parents=True, exist_ok=True)
    ra.save(out / "eval" / "baseline.json")
    rb.save(out / "eval" / "final.json")
    comparison = cmp.to_dict()
    if any(s.name == "judge" for s in cfg.eval.metric_specs()) and ra.predictions and rb.predictions:
        comparison["rows"].append(_pairwise(ra, rb, cfg))
    (out / "eval" / "comparison.json").write_text(json.dumps(comparison, indent=1, ensure_ascii=False))
    data_ = ReportData(f"tunelab compare: {ra.model} vs {rb.model}", comparison=comparison)
    if probe_a is not None and probe_b is not None:
        fg = forgetting_check(probe_a, probe_b, cfg.eval.forgetting.threshold, cfg.eval.forgetting.texts or
                              "general_text", not_applicable_reason(a))  # fmt: skip
        data_.forgetting = asdict(fg)
        (out / "eval" / "forgetting.json").write_text(json.dumps(data_.forgetting, indent=1))
    for r in (ra, rb):
        add_result(data_, r)
    return Comparison(comparison, data_.forgetting, list(write_report(data_, out)))


def _result_or_eval(target: str, cfg: RunConfig, data: list[str] | None) -> tuple[EvalResult, LossResult | None]:
    """A saved result (no forgetting probe possible) or a fresh evaluation with the probe when enabled."""
    if target.endswith(".json") and Path(target).is_file():
        return EvalResult.load(target), None
    return evaluate_target(target, cfg, data, probe=cfg.eval.forgetting.enabled)


def _pairwise(ra: EvalResult, rb: EvalResult, cfg: RunConfig) -> dict[str, Any]:
    res = Judge(cfg.eval.judge).compare_all(
        [question_text(e.prompt) for e in ra.examples], ra.predictions or [], rb.predictions or []
    )
    row = pairwise_row(res, n_resamples=cfg.eval.bootstrap_resamples, seed=cfg.eval.seed)
    return asdict(row) | {"verdict": row.verdict, "details": res.details}
