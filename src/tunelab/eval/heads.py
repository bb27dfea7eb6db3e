"""Evaluation of the head methods (classify, ner, reward) before and after training.

The head's own metrics fill the same structures as generation metrics (an `EvalResult` with one
`MetricResult`, saved as eval/baseline.json and eval/final.json, compared with the paired bootstrap into
eval/comparison.json, and rendered by the report), so the report reads the same for every method:
- classify (`classification`): accuracy, macro precision/recall/F1 (scikit-learn, over the labels present
  in the eval data, like the generation-side `classification` metric), and `majority_baseline`: the
  accuracy of always predicting the most frequent training label. Per example: accuracy (1/0).
- ner (`ner`): entity-level micro precision/recall/F1 and F1 per entity type (seqeval, default
  conlleval-style matching of predicted spans), word-level tag accuracy. Per example: `exact` (every
  tag right) and `token_accuracy`. A word cut by truncation counts as predicted O.
- reward (`reward`): pairwise accuracy (chosen scored above rejected; a tie counts 1/2, so an untrained
  zero head scores chance, 0.5) and the mean margin r_chosen - r_rejected. Per example: both.
Eval items: `eval.data` if set, else the run's eval split (data.eval plus the data.eval_ratio split-off).
There is no forgetting check: a head model has no LM head to measure general-text perplexity with.
`rescore` scores a trained head on new files (`tunelab eval RUN --data FILE`) with the labels in its head.json.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tunelab.config import DatasetConfig, RunConfig
from tunelab.data.heads import (
    FORMAT_OF,
    ClassItem,
    TagItem,
    encode_datasets,
    prepare_heads,
    resolve_formats,
    with_format,
)
from tunelab.data.preference import collate_pairs, prepare_preference
from tunelab.data.tokenize import IGNORE
from tunelab.errors import DataError
from tunelab.eval.compare import compare_results
from tunelab.eval.report import report_run
from tunelab.eval.runner import EVAL_DIR, EvalExample, EvalResult
from tunelab.models.heads import predict_classes, predict_tags
from tunelab.scoring.metrics import MetricResult

KIND_OF = {"seq": "labelled", "token": "tagged"}  # the data a class or tag head reads (a scalar head: pairs)


def eval_items(cfg: RunConfig, tokenizer: Any, head: str) -> tuple[list[Any], list[str], str | None]:
    """(eval items, label names, majority training label) the same way before and after training."""
    if head == "scalar":
        if cfg.eval.data:  # the eval datasets through the training pipeline, unsplit
            data = cfg.data.model_copy(update={"train": list(cfg.eval.data), "eval": [], "eval_ratio": 0.0})
            cfg = cfg.model_copy(update={"data": data})
        pairs = prepare_preference(cfg, tokenizer, "pairs")
        return list(pairs.train if cfg.eval.data else pairs.eval), [], None
    kind = KIND_OF[head]
    cfg = resolve_formats(cfg, kind)
    prepared = prepare_heads(cfg, tokenizer, kind)
    items = (
        encode_datasets(cfg, tokenizer, cfg.eval.data, prepared.labels, kind) if cfg.eval.data else list(prepared.eval)
    )
    majority = None
    if head == "seq" and prepared.train:
        labelled = [it for it in prepared.train if isinstance(it, ClassItem)]
        majority = prepared.labels[Counter(it.label for it in labelled).most_common(1)[0][0]]
    return items, prepared.labels, majority


def evaluate_head(cfg: RunConfig, model: Any, tokenizer: Any, items: Sequence[Any], labels: list[str],
                  majority: str | None, name: str, head: str) -> EvalResult:  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        pad, bs = tokenizer.pad_token_id, cfg.eval.batch_size
        if head == "seq":
            return _classify(model, items, labels, majority, pad, bs, name)
        if head == "token":
            return _ner(model, items, labels, pad, bs, name)
        return _reward(model, tokenizer, items, pad, bs, name)
    finally:
        model.train(was_training)


def _classify(model: Any, items: Sequence[ClassItem], labels: list[str], majority: str | None, pad: int,
              bs: int, name: str) -> EvalResult:  # fmt: skip
    from sklearn.metrics import precision_recall_fscore_support

    gold = [labels[it.label] for it in items]
    pred = [labels[i] for i in predict_classes(model, items, pad, bs)]
    classes = sorted(set(gold))
    correct = [float(p == g) for p, g in zip(pred, gold)]
    p, r, f, _ = precision_recall_fscore_support(gold, pred, labels=classes, average="macro", zero_division=0)
    pc, rc, fc, sc = precision_recall_fscore_support(gold, pred, labels=classes, average=None, zero_division=0)
    scores = {"accuracy": sum(correct) / len(correct), "precision_macro": float(p), "recall_macro": float(r),
              "f1_macro": float(f)}  # fmt: skip
    if majority is not None:  # the training labels are known (not when re-scoring on new files)
        scores["majority_baseline"] = sum(g == majority for g in gold) / len(gold)
    per_class = {c: {"precision": float(pc[i]), "recall": float(rc[i]), "f1": float(fc[i]), "support": int(sc[i])}
                 for i, c in enumerate(classes)}  # fmt: skip
    details = {"majority_label": majority, "labels": len(labels), "per_class": per_class}
    examples = [EvalExample(it.text, g, it.where) for it, g in zip(items, gold)]
    return EvalResult(name, examples, pred, {"classification": MetricResult("classification", scores,
                      {"accuracy": correct}, details)})  # fmt: skip


def _ner(model: Any, items: Sequence[TagItem], labels: list[str], pad: int, bs: int, name: str) -> EvalResult:
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    gold = [list(it.tags) for it in items]
    pred = [[labels[i] if i >= 0 else "O" for i in ids] for ids in predict_tags(model, items, pad, bs)]
    words = sum(len(g) for g in gold)
    right = [sum(a == b for a, b in zip(g, p)) for g, p in zip(gold, pred)]
    scores = {"precision": float(precision_score(gold, pred, zero_division=0)),
              "recall": float(recall_score(gold, pred, zero_division=0)),
              "f1": float(f1_score(gold, pred, zero_division=0)), "token_accuracy": sum(right) / words}  # fmt: skip
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    per_type = {t: {k: float(v) for k, v in d.items()} for t, d in report.items() if not t.endswith(" avg")}
    scores |= {f"f1_{t}": d["f1-score"] for t, d in sorted(per_type.items())}
    per_example = {"exact": [float(g == p) for g, p in zip(gold, pred)],
                   "token_accuracy": [n / len(g) for n, g in zip(right, gold)]}  # fmt: skip
    examples = [EvalExample(" ".join(it.words), " ".join(it.tags), it.where) for it in items]
    result = MetricResult("ner", scores, per_example, {"per_type": per_type, "words": words})
    return EvalResult(name, examples, [" ".join(p) for p in pred], {"ner": result})


def _reward(model: Any, tokenizer: Any, items: Sequence[Any], pad: int, bs: int, name: str) -> EvalResult:

    device = next(model.parameters()).device
    chosen: list[float] = []
    rejected: list[float] = []
    with torch.no_grad():
        for s in range(0, len(items), bs):
            b = collate_pairs(items[s : s + bs], pad)
            out = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device))
            scores = out.logits.squeeze(-1).float().tolist()
            n = len(scores) // 2
            chosen, rejected = chosen + scores[:n], rejected + scores[n:]
    acc = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)]
    margin = [c - r for c, r in zip(chosen, rejected)]

    def split(ex: Any) -> tuple[str, str]:  # (prompt, reply) back from the tokens, for the report
        k = next((i for i, x in enumerate(ex.labels) if x != IGNORE), len(ex.labels))
        return tokenizer.decode(ex.input_ids[:k], skip_special_tokens=True), tokenizer.decode(
            ex.input_ids[k:], skip_special_tokens=True)  # fmt: skip

    examples = [EvalExample(*split(it.chosen)) for it in items]
    preds = [f"chosen {c:+.4f} vs rejected {r:+.4f}" for c, r in zip(chosen, rejected)]
    scores = {"pairwise_accuracy": sum(acc) / len(acc), "mean_margin": sum(margin) / len(margin)}
    return EvalResult(name, examples, preds, {"reward": MetricResult("reward", scores,
                      {"pairwise_accuracy": acc, "margin": margin}, {"pairs": len(acc)})})  # fmt: skip


def rescore(cfg: RunConfig, model: Any, tokenizer: Any, datasets: Sequence[DatasetConfig], info: dict[str, Any],
            name: str) -> EvalResult:  # fmt: skip
    """A trained head's metrics on `datasets` (read as its kind's format), with the labels it was trained on."""
    head = str(info.get("head") or ("scalar" if info.get("method") == "reward" else info["task"]))
    if head == "scalar":
        data = cfg.data.model_copy(update={"train": list(datasets), "eval": [], "eval_ratio": 0.0})
        pairs = list(prepare_preference(cfg.model_copy(update={"data": data}), tokenizer, "pairs").train)
        return evaluate_head(cfg, model, tokenizer, pairs, [], None, name, head)
    labels = list(info.get("labels") or [])
    if not labels:
        raise DataError("the model's head.json names no labels, so its outputs cannot be read as classes")
    kind = KIND_OF[head]
    sets = [with_format(ds, FORMAT_OF[kind]) for ds in datasets]
    items = encode_datasets(cfg, tokenizer, sets, labels, kind)
    if not items:
        raise DataError(f"no {FORMAT_OF[kind]} records to score in {', '.join(ds.path for ds in sets)}")
    return evaluate_head(cfg, model, tokenizer, items, labels, None, name, head)


# --------------------------------------------------------------------------- around training


def before_training(cfg: RunConfig, model: Any, tokenizer: Any, run_dir: Path, head: str, log: Any = print) -> None:
    """eval/baseline.json: the head metrics of the untrained head on the base model."""
    out = run_dir / EVAL_DIR
    if out.exists():  # a reused (output.overwrite) run directory: results of the earlier run are stale
        shutil.rmtree(out)
    if not cfg.eval.baseline or not cfg.eval.metrics:
        return
    items, labels, majority = eval_items(cfg, tokenizer, head)
    if items:
        log(f"baseline: evaluating the untrained {cfg.method.name} head on {len(items)} eval examples")
        evaluate_head(cfg, model, tokenizer, items, labels, majority, "base", head).save(out / "baseline.json")


def after_training(cfg: RunConfig, model: Any, tokenizer: Any, run_dir: Path, head: str,
                   log: Any = print) -> dict[str, Any]:  # fmt: skip
    """eval/final.json, comparison.json against the baseline, and the report; returns a summary."""

    out, summary = run_dir / EVAL_DIR, dict[str, Any]()
    items, labels, majority = eval_items(cfg, tokenizer, head) if cfg.eval.metrics else ([], [], None)
    if items:
        log(f"final: evaluating the trained {cfg.method.name} head on {len(items)} eval examples")
        final = evaluate_head(cfg, model, tokenizer, items, labels, majority, "fine-tuned", head)
        final.save(out / "final.json")
        summary["final"] = {k: m.scores for k, m in final.metrics.items()}
        log("final: " + ", ".join(f"{k} {v:.4f}" for m in final.metrics.values() for k, v in m.scores.items()))
        if (out / "baseline.json").is_file():
            cmp = compare_results(EvalResult.load(out / "baseline.json"), final,
                                  n_resamples=cfg.eval.bootstrap_resamples, seed=cfg.eval.seed).to_dict()  # fmt: skip
            (out / "comparison.json").write_text(json.dumps(cmp, indent=1, ensure_ascii=False))
            summary["comparison"] = cmp["rows"]
    if cfg.eval.forgetting.enabled:
        log("forgetting check skipped: a task-head model has no LM head to measure general-text perplexity with")
    summary["report"] = [str(p) for p in report_run(run_dir)]
    return summary
