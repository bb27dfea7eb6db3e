"""Typer verbs for evaluation: `eval`, `compare`, `report` (the lead mounts them on the main CLI).

A TARGET is a run directory (config.yaml + final/), a model folder, or a preset name. Settings come from
--config (a run config YAML; a run directory's own config.yaml by default) plus KEY=VALUE overrides;
the eval data is --data (repeatable) or the config's data.eval. Everything written is plain JSON next to
a report, so `report` can regenerate pages without a model.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from tunelab.api import load_config
from tunelab.config import DatasetConfig, RunConfig, eval_settings
from tunelab.errors import ConfigError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Evaluate, compare and report.")  # fmt: skip

DataOpt = Annotated[list[str] | None, typer.Option("--data", "-d", help="Eval dataset file or folder (repeatable).")]
ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="Run config YAML with the eval settings.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Config override KEY=VALUE (repeatable).")]


def resolve_config(target: str, config: str | None, overrides: list[str] | None) -> RunConfig:
    from tunelab.models.loader import is_run_dir

    if config is None and is_run_dir(target):
        config = str(Path(target) / "config.yaml")
    return load_config(config, overrides or [])


def load_target(target: str, cfg: RunConfig) -> tuple[Any, Any]:
    """(model, tokenizer) of a run directory, a model folder or a preset."""
    from tunelab.models.loader import load, run_of

    return load(target, like=None if run_of(target) else cfg.model, purpose="eval")


def eval_datasets(cfg: RunConfig, data: list[str] | None) -> list[DatasetConfig]:
    sets = [DatasetConfig(path=p, split="test") if Path(p).is_dir() else DatasetConfig(path=p) for p in data or []]
    sets = sets or list(cfg.data.eval)
    if not sets:
        raise ConfigError("no eval data: pass --data FILE or set data.eval in the config")
    return sets


def evaluate_target(target: str, cfg: RunConfig, data: list[str] | None, probe: bool = False) -> tuple[Any, Any]:
    """(EvalResult, forgetting-probe LossResult or None) of one model, loaded once."""
    from tunelab.eval.runner import evaluate, forgetting_probe, load_examples

    examples = [ex for ds in eval_datasets(cfg, data) for ex in load_examples(ds, cfg.data.max_record_bytes)]
    model, tok = load_target(target, cfg)
    result = evaluate(model, tok, examples, eval_settings(cfg), name=Path(target).name or target,
                      chat_template=cfg.model.chat_template, max_length=cfg.data.max_length)  # fmt: skip
    return result, (forgetting_probe(model, tok, cfg.eval) if probe else None)


def _print_scores(result: Any) -> None:
    for name, m in result.metrics.items():
        scores = ", ".join(f"{k}={v:.4g}" for k, v in m.scores.items())
        counts = {k: m.details[k] for k in ("unparseable", "failed", "invalid", "truncated") if m.details.get(k)}
        typer.echo(f"{name}: {scores}" + (f"  ({counts})" if counts else ""))


@app.command("eval")
def eval_cmd(
    target: Annotated[str, typer.Argument(help="Run directory, model folder or preset name.")],
    data: DataOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Result JSON; default RUN/eval/final.json or ./eval-NAME.json.")
    ] = None,
) -> None:
    """Generate on the eval data and compute the configured metrics.

    Example: tunelab eval runs/my-run --data test.jsonl -s 'eval.metrics=[exact_match,f1,loss]'
    """
    from tunelab.models.loader import is_run_dir

    cfg = resolve_config(target, config, overrides)
    result, _ = evaluate_target(target, cfg, data)
    path = out or (Path(target) / "eval" / "final.json" if is_run_dir(target) else Path(f"eval-{result.model}.json"))
    result.save(path)
    _print_scores(result)
    typer.echo(f"saved {path}")


def _result_or_eval(target: str, cfg: RunConfig, data: list[str] | None) -> tuple[Any, Any]:
    """A saved result (no forgetting probe possible) or a fresh evaluation with the probe when enabled."""
    from tunelab.eval.runner import EvalResult

    if target.endswith(".json") and Path(target).is_file():
        return EvalResult.load(target), None
    return evaluate_target(target, cfg, data, probe=cfg.eval.forgetting.enabled)


@app.command()
def compare(
    a: Annotated[str, typer.Argument(help="Baseline: run dir, model folder, preset, or an eval result .json.")],
    b: Annotated[str, typer.Argument(help="Candidate: same kinds as A.")],
    data: DataOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    out: Annotated[Path, typer.Option(help="Folder for results, comparison.json and the report.")] = Path("compare"),
) -> None:
    """Evaluate A and B on the same data with the same decoding; diff, bootstrap CI and flipped examples.

    Example: tunelab compare tiny runs/my-run --data test.jsonl --out cmp/
    """
    from tunelab.eval.compare import compare_results
    from tunelab.eval.perplexity import forgetting_check, forgetting_line, not_applicable_reason
    from tunelab.eval.report import ReportData, add_result, write_report

    cfg = resolve_config(b, config, overrides)
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
    md, page = write_report(data_, out)
    for row in comparison["rows"]:
        typer.echo(f"{row['key']}: {row['value_a']:.4g} -> {row['value_b']:.4g} (diff {row['diff']:+.4g}, "
                   f"95% CI [{row['ci_low']:.4g}, {row['ci_high']:.4g}]) {row['verdict']}")  # fmt: skip
    if data_.forgetting:
        typer.echo(f"forgetting: {forgetting_line(data_.forgetting)}")
    typer.echo(f"report: {page}")
    if data_.forgetting and data_.forgetting["regressed"] and cfg.eval.fail_on_regression:
        raise typer.Exit(1)


def _pairwise(ra: Any, rb: Any, cfg: RunConfig) -> dict[str, Any]:
    from tunelab.eval.compare import pairwise_row
    from tunelab.eval.runner import question_text
    from tunelab.scoring.judge import Judge

    res = Judge(cfg.eval.judge).compare_all(
        [question_text(e.prompt) for e in ra.examples], ra.predictions, rb.predictions
    )
    row = pairwise_row(res, n_resamples=cfg.eval.bootstrap_resamples, seed=cfg.eval.seed)
    return asdict(row) | {"verdict": row.verdict, "details": res.details}


@app.command()
def report(run: Annotated[str, typer.Argument(help="Run directory (or a compare --out folder).")]) -> None:
    """Regenerate report.md and report.html of a run from what it saved.

    Example: tunelab report runs/my-run
    """
    from tunelab.eval.report import report_run

    md, page = report_run(run)
    typer.echo(f"wrote {md} and {page}")
