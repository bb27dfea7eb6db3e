"""Model cards (README.md in the Hugging Face Hub's format) filled from a run's own files.

A card is written into the run's final/ after the closing evaluation (tunelab.api.train calls
`write_run_card`, replacing peft's blank template), and into every export folder (`write_export_card`,
refreshed when the export is verified). Everything in it is read from files the run or export wrote:
config.yaml (method, tuning, hyperparameters), data_manifest.json (files, sha256, counts), data_check.json
(the data check's findings), metrics.jsonl (steps and losses), eval/comparison.json (base vs fine-tuned
with paired-bootstrap CIs), eval/forgetting.json, environment.json (library versions), and for exports
export.json and verify.json (parity figures). What a run did not produce is said to be absent, not
invented. The YAML header is rendered by huggingface_hub's ModelCardData so the Hub parses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tunelab.eval.card_text import (
    data_section,
    eval_section,
    export_section,
    hub_id,
    intended_use,
    limitations,
    model_section,
    training_section,
    usage_section,
)
from tunelab.models.heads import head_kind, read_head_info
from tunelab.models.loader import is_run_dir

# a run with a task head instead of the LM head (final/head.json, tunelab.models.heads), by head kind
PIPELINE_TAGS = {"seq": "text-classification", "scalar": "text-classification", "token": "token-classification"}


def read_run(run_dir: Path) -> dict[str, Any]:
    """The run's files the card is built from (each None when the run did not write it)."""

    def js(rel: str) -> Any:
        p = run_dir / rel
        return json.loads(p.read_text()) if p.is_file() else None

    metrics = run_dir / "metrics.jsonl"
    return {
        "name": run_dir.resolve().name,
        "config": yaml.safe_load((run_dir / "config.yaml").read_text()),
        "manifest": js("data_manifest.json"),
        "check": js("data_check.json"),
        "comparison": js("eval/comparison.json"),
        "forgetting": js("eval/forgetting.json"),
        "environment": js("environment.json"),
        "metrics": [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.is_file() else [],
        "adapter": (run_dir / "final" / "adapter_config.json").is_file(),
        "head": head_kind(info) if (info := read_head_info(run_dir / "final")) else None,
    }


def header(run: dict[str, Any] | None, kind: str, export: dict[str, Any] | None) -> str:
    from huggingface_hub import ModelCardData

    cfg = (run or {}).get("config") or {}
    base = cfg.get("model", {}).get("name_or_path", "")
    tags = ["tunelab", cfg.get("method", {}).get("name"), cfg.get("tuning", {}).get("mode")]
    if export and export.get("format") == "gguf":
        tags += ["gguf", export.get("type")]
    datasets = [d["path"] for d in cfg.get("data", {}).get("train", []) if hub_id(d["path"])]
    data = ModelCardData(
        base_model=base if hub_id(base) else None,
        library_name={"adapter": "peft", "gguf": "gguf"}.get(kind, "transformers"),
        pipeline_tag=PIPELINE_TAGS.get((run or {}).get("head") or "", "text-generation"),
        tags=[t for t in tags if t],
        datasets=datasets or None,
    )
    return f"---\n{data.to_yaml()}\n---\n"


def card_text(run: dict[str, Any] | None, kind: str, export: dict[str, Any] | None = None,
              verify: dict[str, Any] | None = None) -> str:  # fmt: skip
    """The whole card. kind: adapter | full (a run's final/), merged | hf | gguf (an export folder)."""
    title = run["name"] if run else Path((export or {}).get("source", "model")).name
    parts = [header(run, kind, export), f"# {title}\n", model_section(run, kind, export)]
    if run:
        parts += [data_section(run), training_section(run), eval_section(run)]
    if export:
        parts.append(export_section(export, verify))
    parts += [intended_use(run, kind), limitations(run, export, verify), usage_section(run, kind, export)]
    return "\n".join(p.rstrip() + "\n" for p in parts if p)


def write_run_card(run_dir: str | Path) -> Path:
    """RUN/final/README.md from the run's files; call after the closing evaluation."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    path = run_dir / "final" / "README.md"
    path.write_text(card_text(run, "adapter" if run["adapter"] else "full"))
    return path


def write_export_card(export_dir: str | Path) -> Path:
    """EXPORT/README.md from export.json, verify.json and (when the source is a run) the run's files."""
    export_dir = Path(export_dir)
    export = json.loads((export_dir / "export.json").read_text())
    verify_file = export_dir / "verify.json"
    verify = json.loads(verify_file.read_text()) if verify_file.is_file() else None
    source = Path(export["source"])
    run = read_run(source) if is_run_dir(source) else None
    kind = (
        export["format"]
        if export["format"] != "hf"
        else ("adapter" if (export_dir / "adapter_config.json").is_file() else "full")
    )
    path = export_dir / "README.md"
    path.write_text(card_text(run, kind, export, verify))
    return path
