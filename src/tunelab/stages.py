"""Sequential training: a config's `stages:` run one after another (e.g. sft then dpo).

Each stage is the run's config with the stage's section overrides merged in (config.stage_config) and
trains from the previous stage's result. An adapter result is merged into its base and saved as a full
model in <stage run>/merged/ (with the tokenizer and its chat template), so the next stage can apply
fresh adapters, and a DPO stage's reference (adapters off) is exactly the SFT model. Run directories
are <output.dir>/<output.name>/<index>-<stage name>. Not supported yet: per-stage gates, --resume
across stages (a finished stage is not skipped).
"""

from __future__ import annotations

from pathlib import Path

from tunelab.config import RunConfig, stage_config


def handoff(run_dir: Path) -> Path:
    """The folder the next stage loads: final/ for a full model, else the adapter merged into its base."""
    final = run_dir / "final"
    if not (final / "adapter_config.json").is_file():
        return final
    from tunelab.models.load import load_run

    model, tok = load_run(run_dir)
    merged = run_dir / "merged"
    model.merge_and_unload().save_pretrained(str(merged), safe_serialization=True)
    tok.save_pretrained(str(merged))
    return merged


def run_stages(cfg: RunConfig, config_path: str | Path | None = None) -> list[Path]:
    """Train every stage in order; returns their run directories."""
    from tunelab.api import train

    runs: list[Path] = []
    model_path: str | None = None
    for i, stage in enumerate(cfg.stages):
        scfg = stage_config(cfg, i, model_path)
        print(
            f"=== stage {i + 1}/{len(cfg.stages)}: {stage.name} (method {scfg.method.name}, model {scfg.model.name_or_path})"
        )
        run = train(scfg, config_path=config_path)
        runs.append(run)
        if i < len(cfg.stages) - 1:
            model_path = str(handoff(run))
    return runs
