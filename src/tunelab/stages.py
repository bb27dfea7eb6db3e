"""Sequential training: a config's `stages:` run one after another (e.g. sft then dpo).

Each stage is the run's config with the stage's section overrides merged in (config.stage_config) and
trains from the previous stage's result. An adapter result is merged into its base and saved as a full
model in <stage run>/merged/ (with the tokenizer and its chat template), so the next stage can apply
fresh adapters, and a DPO stage's reference (adapters off) is exactly the SFT model. Run directories
are <output.dir>/<output.name>/<index>-<stage name>.

A stage may have a gate: the next stage starts only if this stage's result passes it (a metric threshold
from its eval, optionally a significant improvement over the baseline, and the forgetting check). A
failed gate stops the sequence with an error that says what was measured; every finished stage writes
<stage run>/stage.json, and the sequence writes <output.dir>/<output.name>/stages.json. With --resume a
stage that has final/ and stage.json is not trained again (its gate is re-checked, so a changed threshold
applies), a stage with checkpoints resumes, and the rest start fresh.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import GateConfig, RunConfig, stage_config
from tunelab.errors import TunelabError
from tunelab.models.loader import load_run
from tunelab.train.run import train_one

STAGE_FILE = "stage.json"


class GateFailed(TunelabError):
    pass


@dataclass
class GateResult:
    metric: str
    value: float | None
    passed: bool
    failures: list[str] = field(default_factory=list)  # one line per unmet condition


def handoff(run_dir: Path) -> Path:
    """The folder the next stage loads: final/ for a full model, else the adapter merged into its base."""
    final = run_dir / "final"
    if not (final / "adapter_config.json").is_file():
        return final
    merged = run_dir / "merged"
    if (merged / "config.json").is_file():  # merged by an earlier (resumed) sequence
        return merged
    model, tok = load_run(run_dir)
    model.merge_and_unload().save_pretrained(str(merged), safe_serialization=True)
    tok.save_pretrained(str(merged))
    return merged


# --------------------------------------------------------------------------- gates


def available_metrics(run_dir: Path) -> dict[str, float]:
    """What a gate can read: the last eval record of metrics.jsonl (eval_*), then eval/final.json scores
    as '<metric>.<score>' (task metrics are already named '<task>/<metric>')."""
    out: dict[str, float] = {}
    log = run_dir / "metrics.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if "eval_loss" in rec:
                out |= {k: v for k, v in rec.items() if k.startswith("eval_") and isinstance(v, int | float)}
    final = run_dir / "eval" / "final.json"
    if final.is_file():
        for name, m in json.loads(final.read_text())["metrics"].items():
            out |= {f"{name}.{k}": v for k, v in m["scores"].items() if isinstance(v, int | float)}
    return out


def check_gate(gate: GateConfig, run_dir: Path) -> GateResult:
    metrics = available_metrics(run_dir)
    if gate.metric not in metrics:
        known = ", ".join(sorted(metrics)) or "none (no eval ran: set data.eval/eval_ratio and eval.metrics)"
        raise TunelabError(f"gate metric {gate.metric!r} was not measured in {run_dir}; measured: {known}")
    value = float(metrics[gate.metric])
    fails = []
    if gate.min is not None and not value >= gate.min:
        fails.append(f"{gate.metric} = {value:.4g} < min {gate.min:g}")
    if gate.max is not None and not value <= gate.max:
        fails.append(f"{gate.metric} = {value:.4g} > max {gate.max:g}")
    if gate.improved:
        fails += _improvement_failures(gate.metric, run_dir)
    if gate.forgetting:
        fails += _forgetting_failures(run_dir)
    return GateResult(gate.metric, value, not fails, fails)


def _improvement_failures(metric: str, run_dir: Path) -> list[str]:
    cmp = run_dir / "eval" / "comparison.json"
    if not cmp.is_file():
        return [f"improved: no baseline comparison in {cmp.parent} (needs eval.baseline and eval.metrics)"]
    rows = {f"{r['metric']}.{r['key']}": r for r in json.loads(cmp.read_text())["rows"]}
    row = rows.get(metric)
    if row is None:
        return [f"improved: {metric} is not in the baseline comparison (compared: {', '.join(sorted(rows))})"]
    if row["verdict"] != "better":
        return [f"improved: {metric} {row['value_a']:.4g} -> {row['value_b']:.4g}, 95% CI of the difference "
                f"[{row['ci_low']:.4g}, {row['ci_high']:.4g}]: {row['verdict']}"]  # fmt: skip
    return []


def _forgetting_failures(run_dir: Path) -> list[str]:
    path = run_dir / "eval" / "forgetting.json"
    if not path.is_file():
        return []  # the check did not run (eval.forgetting.enabled false): nothing to hold
    fg = json.loads(path.read_text())
    if not fg.get("regressed"):
        return []
    return [f"forgetting: general-text perplexity {fg['before']:.4g} -> {fg['after']:.4g} "
            f"(+{fg['relative_change']:.0%} > {fg['threshold']:.0%})"]  # fmt: skip


# --------------------------------------------------------------------------- the sequence


def run_stages(cfg: RunConfig, config_path: str | Path | None = None, resume: bool = False) -> list[Path]:
    """Train every stage in order; returns their run directories. Raises GateFailed at a failed gate."""
    runs: list[Path] = []
    summary: list[dict[str, Any]] = []
    model_path: str | None = None
    for i, stage in enumerate(cfg.stages):
        scfg = stage_config(cfg, i, model_path)
        run = Path(scfg.output.dir) / str(scfg.output.name)
        done = resume and (run / "final").is_dir() and (run / STAGE_FILE).is_file()
        head = f"=== stage {i + 1}/{len(cfg.stages)}: {stage.name} (method {scfg.method.name}, model {scfg.model.name_or_path})"
        print(head + (": finished earlier, not trained again" if done else ""))
        if not done:
            run = train_one(scfg, resume=resume and (run / "checkpoints").is_dir(), config_path=config_path)
        runs.append(run)
        gate = check_gate(stage.gate, run) if stage.gate else None
        record = {"index": i + 1, "stage": stage.name, "method": scfg.method.name, "run": str(run),
                  "gate": asdict(gate) if gate else None}  # fmt: skip
        (run / STAGE_FILE).write_text(json.dumps(record, indent=1))
        summary.append(record)
        (run.parent / "stages.json").write_text(json.dumps(summary, indent=1))
        if gate and not gate.passed:
            later = f"; stages {i + 2}-{len(cfg.stages)} not run" if i < len(cfg.stages) - 1 else ""
            raise GateFailed(f"stage {i + 1} ({stage.name}) did not pass its gate: {'; '.join(gate.failures)}"
                             f"{later}. Results: {run}")  # fmt: skip
        if gate:
            print(f"gate passed: {gate.metric} = {gate.value:.4g}")
        if i < len(cfg.stages) - 1:
            model_path = str(handoff(run))
    return runs
