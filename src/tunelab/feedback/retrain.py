"""`tunelab retrain RUN --feedback EXPORT`: the next run from reviewed feedback, trained, compared with RUN, gated.

1. The data kind (`kind`, default sft when the export has it, else preference, else kto) picks the method:
   RUN's own when it trains on that kind, else sft, dpo or kto.
2. A seeded `holdout` share of the export's prompts becomes the feedback eval slice (`feedback.jsonl`: the good
   answers to those prompts), never trained on; the rest trains.
3. The config is RUN's config.yaml, continuing RUN: an adapter run keeps its base and continues its adapter
   (tuning.init_adapter, so the result still fits the server's base and can be hot-swapped); a full run
   trains on from RUN/final. data.train is the feedback plus a `replay` share of RUN's own training data (the
   share of examples drawn per epoch, by dataset weights; only when RUN trained on the same data kind);
   eval.data is RUN's eval sets plus the feedback slice; `overrides` (a.b=c) come last. Written to
   OUT/NAME.retrain/ (config.yaml, the split files) before training, so the run can be repeated by hand.
4. api.train runs it (its own baseline, evaluation and report as any run) -> OUT/NAME.
5. api.compare evaluates RUN and the new run on the same eval sets with the same decoding (paired bootstrap,
   forgetting check) -> OUT/NAME/gates/; gates.py judges it -> OUT/NAME/gates.json. NEW/retrain.json records
   where everything came from (lineage reads it).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunelab import api
from tunelab.config import DatasetConfig, RunConfig, dump_config
from tunelab.errors import TunelabError
from tunelab.feedback.export import MANIFEST
from tunelab.feedback.gates import FEEDBACK_TASK, GateReport, judge
from tunelab.feedback.rows import KINDS, prompt_key
from tunelab.methods import METHODS
from tunelab.models.loader import is_run_dir
from tunelab.quality.io import sha256_file, write_rows
from tunelab.textio import read_text

KIND_DATA = {"sft": "sft", "preference": "pairs", "kto": "unpaired"}  # export kind -> a method's data kind
DEFAULT_METHOD = {"sft": "sft", "preference": "dpo", "kto": "kto"}
GATES = "gates.json"
RECORD = "retrain.json"


@dataclass(frozen=True)
class RetrainOptions:
    kind: str | None = None  # sft, preference or kto; default: the first the export has
    replay: float = 0.5  # share of training examples drawn from RUN's own training data
    holdout: float = 0.25  # share of the export's prompts kept for the feedback eval slice
    epochs: float = 2.0
    seed: int = 0
    name: str | None = None  # the new run's name; default <run>-fb<N>
    out: str | None = None  # the folder for the new run; default RUN's parent
    gate_metric: str | None = None
    overrides: tuple[str, ...] = ()


@dataclass
class RetrainResult:
    run: Path
    gates: GateReport
    record: dict[str, Any]


def retrain(run: str | Path, feedback: str | Path, options: RetrainOptions | None = None) -> RetrainResult:
    """Write, train, compare and gate the next run; returns it with its gate report (a failed gate is a result)."""
    options = options or RetrainOptions()
    run, feedback = Path(run), Path(feedback)
    if not is_run_dir(run):
        raise TunelabError(f"{run}: not a run directory (expected config.yaml and final/)")
    old = api.load_config(run / "config.yaml")
    if not (old.eval.data or old.data.eval):
        raise TunelabError(f"{run}: no eval set files (data.eval or eval.data); the gates check the retrained run "
                           "for regressions on them, and a data.eval_ratio split is not kept as a file")  # fmt: skip
    manifest = read_manifest(feedback)
    kind = pick_kind(manifest, options.kind)
    name = options.name or next_name(run, Path(options.out) if options.out else run.parent)
    out = Path(options.out) if options.out else run.parent
    work = out / f"{name}.retrain"
    train_rows, slice_rows = split(read_rows(feedback / manifest["files"][kind]["path"]), kind, options)
    files = {"train": write_rows(train_rows, work / "feedback_train.jsonl"),
             "slice": write_rows(slice_rows, work / f"{FEEDBACK_TASK}.jsonl")}  # fmt: skip
    cfg, replay = next_config(run, old, kind, files, len(train_rows), name, out, options)
    config = work / "config.yaml"
    config.write_text(dump_config(cfg))
    cfg = api.load_config(config, list(options.overrides))
    record = _record(run, feedback, manifest, kind, cfg, files, len(train_rows), len(slice_rows), replay)
    new = api.train(cfg, config_path=config)
    (new / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    report = gate(run, new, cfg, options.gate_metric)
    return RetrainResult(new, report, record)


def gate(run: Path, new: Path, cfg: RunConfig, metric: str | None = None) -> GateReport:
    """Compare RUN and NEW on NEW's eval sets (paired bootstrap, forgetting) and judge the gates."""
    compare_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"eval": list(cfg.eval.data)})})
    path = new / "gates" / "compare.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(compare_cfg))
    cmp = api.compare(str(run), str(new), None, str(path), out=new / "gates")
    report = judge(cmp.comparison, cmp.forgetting, str(run), str(new), metric)
    (new / GATES).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return report


# --------------------------------------------------------------------------- the export


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise TunelabError(f"--feedback {folder}: not a feedback export (no {MANIFEST}; see tunelab feedback export)")
    manifest = json.loads(path.read_text())
    for kind, f in manifest["files"].items():
        if sha256_file(folder / f["path"]) != f["sha256"]:
            raise TunelabError(f"{folder / f['path']}: changed since it was exported ({kind} sha256 differs from "
                               f"{path}); export again rather than edit an export")  # fmt: skip
    return manifest


def pick_kind(manifest: dict[str, Any], wanted: str | None) -> str:
    have = [k for k in KINDS if k in manifest["files"]]
    if wanted is None:
        return have[0]
    if wanted not in KINDS:
        raise TunelabError(f"--kind {wanted}: expected one of {', '.join(KINDS)}")
    if wanted not in have:
        raise TunelabError(f"--kind {wanted}: the export has no {wanted} rows (it has {', '.join(have)})")
    return wanted


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_text(path, "feedback export").splitlines() if line.strip()]


def split(rows: list[dict[str, Any]], kind: str, options: RetrainOptions) -> tuple[list[dict], list[dict]]:
    """(training rows, the eval slice): whole prompts are held out; the slice keeps their good answers."""
    keys = sorted({prompt_key(r["prompt"]) for r in rows})
    random.Random(options.seed).shuffle(keys)
    n = math.ceil(len(keys) * options.holdout) if options.holdout > 0 else 0
    if n == 0 or n >= len(keys):
        raise TunelabError(f"--holdout {options.holdout}: {len(keys)} distinct prompt(s) in the export; the gates "
                           "need some for the feedback eval slice and some to train on")  # fmt: skip
    held = set(keys[:n])
    train = [r for r in rows if prompt_key(r["prompt"]) not in held]
    good = {"sft": "completion", "preference": "chosen", "kto": "completion"}[kind]
    slice_ = [{"prompt": r["prompt"], "completion": r[good], "provenance": r.get("provenance")}
              for r in rows if prompt_key(r["prompt"]) in held and r.get("label", True)]  # fmt: skip
    return train, slice_


# --------------------------------------------------------------------------- the next config


def next_name(run: Path, out: Path) -> str:
    n = 1
    while (out / f"{run.name}-fb{n}").exists() or (out / f"{run.name}-fb{n}.retrain").exists():
        n += 1
    return f"{run.name}-fb{n}"


def next_config(run: Path, old: RunConfig, kind: str, files: dict[str, Path], n_train: int, name: str, out: Path,
                options: RetrainOptions) -> tuple[RunConfig, dict[str, Any]]:  # fmt: skip
    """RUN's config continued on the feedback; and the replay plan."""
    method = old.method.name if METHODS[old.method.name].data == KIND_DATA[kind] else DEFAULT_METHOD[kind]
    model, tuning = old.model, old.tuning
    if (run / "final" / "adapter_config.json").is_file():
        tuning = tuning.model_copy(update={"init_adapter": str((run / "final").resolve())})
    else:
        model = model.model_copy(update={"name_or_path": str((run / "final").resolve())})
    replay = replay_sets(run, old, n_train, options.replay) if METHODS[old.method.name].data == KIND_DATA[kind] else {}
    train = [DatasetConfig(path=str(files["train"].resolve())), *replay.get("datasets", [])]
    evals = [*(old.eval.data or old.data.eval), DatasetConfig(path=str(files["slice"].resolve()))]
    cfg = old.model_copy(update={
        "model": model, "tuning": tuning,
        "method": old.method.model_copy(update={"name": method}),
        "data": old.data.model_copy(update={"train": train}),
        "eval": old.eval.model_copy(update={"data": evals}),
        "train": old.train.model_copy(update={"epochs": options.epochs, "max_steps": None}),
        "output": old.output.model_copy(update={"dir": str(out), "name": name, "overwrite": False}),
    })  # fmt: skip
    plan = {k: v for k, v in replay.items() if k != "datasets"} or {"examples": 0, "why": "RUN trained on other data"}
    return cfg, plan


def replay_sets(run: Path, old: RunConfig, n_feedback: int, share: float) -> dict[str, Any]:
    """RUN's training datasets weighted so that they give `share` of each epoch's examples."""
    if not 0 <= share < 1:
        raise TunelabError(f"--replay {share}: expected a share in [0, 1)")
    if share == 0 or not old.data.train:
        return {"examples": 0}
    want = round(n_feedback * share / (1 - share))
    records = {m["path"]: m.get("train") or m.get("records") or 0 for m in _manifest(run)}
    sizes = [records.get(ds.path, 0) * ds.weight for ds in old.data.train]
    total = sum(sizes)
    if total == 0:
        raise TunelabError(f"{run}/data_manifest.json: no record counts for RUN's training data; cannot plan replay")
    datasets = [ds.model_copy(update={"weight": max(want * s / total, 1e-6) / records[ds.path]})
                for ds, s in zip(old.data.train, sizes) if s]  # fmt: skip
    return {"examples": want, "share": share, "datasets": datasets}


def _manifest(run: Path) -> list[dict[str, Any]]:
    path = run / "data_manifest.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _record(run: Path, feedback: Path, manifest: dict[str, Any], kind: str, cfg: RunConfig,
            files: dict[str, Path], n_train: int, n_slice: int, replay: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    return {
        "created_at": datetime.now(timezone.utc).isoformat(),
        "from_run": str(run.resolve()),
        "feedback": str(feedback.resolve()),
        "export_sha256": sha256_file(feedback / MANIFEST),
        "export_against": manifest.get("against"),
        "kind": kind,
        "method": cfg.method.name,
        "continues": cfg.tuning.init_adapter or cfg.model.name_or_path,
        "feedback_train": {"path": str(files["train"]), "rows": n_train, "sha256": sha256_file(files["train"])},
        "feedback_slice": {"path": str(files["slice"]), "rows": n_slice, "sha256": sha256_file(files["slice"])},
        "replay": replay,
    }
