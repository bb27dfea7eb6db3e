"""`tunelab quickstart`: the whole lifecycle on an embedded task and model, offline, in minutes on a CPU.

It writes the task's data (support messages -> JSON tickets, see data/quickstart_task.py) and a config the user
can read and edit, then runs what `tunelab validate` and `tunelab train` run: data checks, the base
model's evaluation, training, the fine-tuned model's evaluation on the held-out test split, the paired
comparison and the report. The default model is the `tiny-1m` preset (0.9M parameters, a BPE tokenizer built
from text that ships with tunelab) trained from scratch, so the baseline is zero by construction; `--model` takes a folder or hub id for a real base model.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from tunelab.data.quickstart_task import write_splits
from tunelab.errors import TunelabError

CONFIG_TEMPLATE = """\
# The quickstart run: edit and re-run with `tunelab train {config}`.
model:
  name_or_path: {model}
  seed: 0
tuning:
  mode: {mode}
data:
  train: [{{path: data/train.jsonl}}]
  eval: [{{path: data/eval.jsonl}}]     # eval loss during training
  max_length: 256                       # packed rows of up to 256 tokens (about 5 examples)
  packing: true
train:
  epochs: {epochs}
  batch_size: 2
  lr: {lr}
  warmup_ratio: 0.05
  schedule: cosine
  log_every: 10
  seed: 0
eval:
  data: [{{path: data/test.jsonl}}]     # held-out test split: baseline vs fine-tuned
  metrics: [json, loss]
  max_new_tokens: 96                    # bytes: the JSON answer is about 70
  batch_size: 100
output:
  dir: runs
  name: quickstart
  overwrite: true
"""


def write_project(out: Path, model: str, epochs: float, preset: bool) -> Path:
    """The data splits and quickstart.yaml in `out`; returns the config path."""
    write_splits(out / "data")
    config = out / "quickstart.yaml"
    mode, lr = ("full", 3e-3) if preset else ("lora", 2e-4)
    config.write_text(CONFIG_TEMPLATE.format(config=config, model=model, mode=mode, epochs=epochs, lr=lr))
    return config


EXAMPLES = Path(__file__).parent / "examples"


def init_examples(folder: Path, force: bool = False) -> list[Path]:
    """Copy the packaged example configs (and their small data) into `folder`; never overwrite unless asked.

    The comments of the packaged configs name files as seen from the repository root (`examples/full.yaml`);
    the copies name them as seen from where `init` runs (`full.yaml`, or `FOLDER/full.yaml`), so the commands
    in them work as written from there.
    """
    written = []
    for src in sorted(p for p in EXAMPLES.rglob("*") if p.is_file()):
        dest = folder / src.relative_to(EXAMPLES)
        if dest.exists() and not force:
            raise TunelabError(f"{dest} exists; pass --force to overwrite")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".yaml":
            dest.write_text(relocate_comments(src.read_text(), folder))
        else:
            dest.write_bytes(src.read_bytes())
        written.append(dest)
    written.append(write_project(folder, "tiny-1m", 5.0, preset=True))
    return written


EXAMPLES_PREFIX = re.compile(r"(?<![\w./-])examples/")


def relocate_comments(text: str, folder: Path) -> str:
    """`examples/` in the comments of `text` replaced by `folder` (dropped for the current folder)."""
    prefix = "" if folder == Path(".") else f"{folder}/"
    lines = []
    for line in text.splitlines(keepends=True):
        code, hash_, comment = line.partition("#")
        lines.append(code + hash_ + EXAMPLES_PREFIX.sub(prefix, comment))
    return "".join(lines)


def run(
    model: str = "tiny-1m", out: Path = Path("quickstart"), epochs: float = 5.0, log: Any = print
) -> dict[str, Any]:
    """Write, validate, train (with baseline and final evaluation), report; returns the summary."""
    from tunelab.api import load_config, train, validate
    from tunelab.models.presets import is_preset

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    config = write_project(out, model, epochs, is_preset(model))
    cfg = load_config(config, [f"output.dir={out / 'runs'}"])
    log(f"1/4 data: wrote {out / 'data'} (train/eval/test) and {config}")
    report = validate(cfg)
    log(f"    {report['train_examples']} training and {report['eval_examples']} eval examples")
    log("2/4 baseline, 3/4 training, 4/4 evaluation (see the progress below)")
    run_dir = train(cfg, config_path=config)
    summary = summarize(run_dir)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["config"] = str(config)
    return summary


def summarize(run_dir: Path) -> dict[str, Any]:
    import json

    cmp = json.loads((run_dir / "eval" / "comparison.json").read_text())
    rows = {r["metric"] + ("" if r["key"] == r["metric"] else "/" + r["key"]): r for r in cmp["rows"]}
    fg = run_dir / "eval" / "forgetting.json"
    forgetting = json.loads(fg.read_text()) if fg.is_file() else None
    return {"run_dir": str(run_dir), "rows": rows, "forgetting": forgetting, "report": str(run_dir / "report.html")}


SUMMARY_ROWS = {"json/json_field_accuracy": "json/json_field_accuracy", "json/json_all_fields": "json/json_all_fields",
                "json/json_valid": "json/json_valid", "loss": "loss (mean per example)"}  # fmt: skip


def format_summary(s: dict[str, Any]) -> str:
    from tunelab.eval.perplexity import forgetting_line

    lines = [
        f"\ndone in {s['seconds']:.0f} s. Held-out test split, base model vs fine-tuned (95% paired bootstrap CI):"
    ]
    for name, label in SUMMARY_ROWS.items():
        r = s["rows"].get(name)
        if r:
            lines.append(f"  {label:28} {r['value_a']:.3f} -> {r['value_b']:.3f}   diff {r['diff']:+.3f} "
                         f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]  {r['verdict']}")  # fmt: skip
    if s.get("forgetting"):
        lines.append(f"forgetting check: {forgetting_line(s['forgetting'])}")
    run = s["run_dir"]
    lines += [
        f"report:  {s['report']}",
        f"model:   {run}/final",
        "next:",
        f"  tunelab chat {run}",
        f"  tunelab generate {run} --prompt \"Hi, I'm Ana Lee. Please cancel my blender, order 12345. It's urgent.\"",
        f"  tunelab serve {run}",
        f"  tunelab train {s['config']} train.epochs=6     # edit the config and train again",
    ]
    return "\n".join(lines)
