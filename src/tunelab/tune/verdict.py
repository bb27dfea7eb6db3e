"""Is the gain real? The best trial against the config as written, on the test split, with paired bootstrap CIs.

Trials are chosen on the validation split, so the best trial's validation score is biased upwards (it won a
contest on that data). The honest check trains the default config once (STUDY/default, a normal run), evaluates
both final models on eval.data (the test split no trial was scored on) with the same decoding, and compares them
per example (tunelab.eval: compare_targets, paired bootstrap). The verdict line per objective says whether the
difference is significant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab import api
from tunelab.config import RunConfig
from tunelab.eval.targets import compare_targets
from tunelab.tune import space
from tunelab.tune.study import Study
from tunelab.tune.trial import run_config


def compare_with_default(cfg: RunConfig, where: Study, best_run: Path, best_yaml: Path, log: Any = print) -> list[str]:
    """Train the default config (unless its run is already there), compare it with `best_run` on eval.data;
    the comparison is written to STUDY/best-vs-default/. Returns the verdict lines."""
    if not cfg.eval.data:
        return ["no comparison: eval.data (the test split) is not set; the best trial was not checked on unseen data"]
    default = where.root / "default"
    if not (default / "final").is_dir():
        log(f"tune: training the default config (as written) into {default} for the comparison")
        api.train(run_config(space.base_raw(cfg), {}, f"{where.name}/default", "the default config"))
    test_cfg = api.load_config(best_yaml)
    test_cfg = test_cfg.model_copy(update={"data": test_cfg.data.model_copy(update={"eval": list(cfg.eval.data)})})
    out = where.root / "best-vs-default"
    cmp = compare_targets(str(default), str(best_run), test_cfg, None, out)
    return verdict_lines(cmp.comparison, [o.metric for o in cfg.tune.objectives] if cfg.tune else [])


def row_name(metric: str) -> str:
    """The comparison row that answers an objective: eval_loss -> loss.loss, 'json.json_valid' as written."""
    if metric in ("eval_loss", "eval_ppl"):
        return "loss.loss"
    return metric


def verdict_lines(comparison: dict[str, Any], objectives: list[str]) -> list[str]:
    rows = comparison.get("rows", [])
    wanted = {row_name(m) for m in objectives}
    lines = [f"default ({comparison.get('name_a')}) vs best ({comparison.get('name_b')}) on the test split, "
             "95% paired bootstrap CI of the difference:"]  # fmt: skip
    for r in rows:
        mark = "  <- objective" if f"{r['metric']}.{r['key']}" in wanted else ""
        lines.append(f"  {r['label']:<28} {r['value_a']:.4g} -> {r['value_b']:.4g}  diff {r['diff']:+.4g} "
                     f"[{r['ci_low']:+.4g}, {r['ci_high']:+.4g}]  {r['verdict']}{mark}")  # fmt: skip
    hits = [r for r in rows if f"{r['metric']}.{r['key']}" in wanted]
    if not hits:
        lines.append("  (no test-split row for the objective; the rows above are what eval.metrics measured)")
    for r in hits:
        real = {"better": "the gain is real (the CI excludes 0)", "worse": "the best trial is WORSE on the test split"}
        lines.append(f"verdict on {r['label']}: " + real.get(r["verdict"], "no significant difference: the gain "
                     "seen on the validation split may be luck"))  # fmt: skip
    return lines
