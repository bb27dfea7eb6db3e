"""Distillation on a real pretrained teacher: does learning the teacher's distributions beat learning its text?

Teacher: ../shared/models/stories260k (a TinyStories Llama). It writes the data: sampled continuations
(temperature 1) of story openings, through `tunelab.methods.teacher_data` (what `tunelab data distill` and
`method.distill.mode: completions` run). Student: the same architecture with 2 of its 5 layers, random init, the
teacher's tokenizer (so logit distillation applies). Each variant trains the same steps on the same records
with `tunelab.api.train`; held-out records (other openings, other seed) measure the student's per-token KL to
the teacher, its cross-entropy on the teacher's text, and top-1 agreement.

  PYTHONPATH=src python bench/distill_compare.py --out /tmp/distill-bench [--train 256 --epochs 4]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from tunelab.api import train
from tunelab.config import DatasetConfig, MethodConfig, RunConfig, TeacherGeneration
from tunelab.data.pipeline import prepare
from tunelab.methods import distill
from tunelab.methods.teacher_data import Teacher, distill_dataset

TEACHER = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260k"
NAMES = ["Lily", "Tom", "Sam", "Mia", "Ben", "Anna", "Max", "Sue", "Tim", "Zoe"]
THINGS = ["a red ball", "a little dog", "a big tree", "a shiny box", "a small boat", "a blue bird", "a kite"]
OPENINGS = ["Once upon a time, {n} found {t}.", "One day, {n} saw {t} in the park.", "{n} wanted {t}.",
            "There was a girl named {n}. She had {t}.", "{n} and Mom went to see {t}."]  # fmt: skip

VARIANTS = {
    "sft (teacher's text)": {"name": "sft"},
    "kd forward": {"name": "distill", "distill": {"loss": "forward"}},
    "kd reverse": {"name": "distill", "distill": {"loss": "reverse"}},
    "kd mix 0.5 + ce 0.5": {"name": "distill", "distill": {"loss": "mix", "mix": 0.5, "ce_weight": 0.5}},
}


def prompts(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"prompt": rng.choice(OPENINGS).format(n=rng.choice(NAMES), t=rng.choice(THINGS))} for _ in range(n)]


def teacher_data(out: Path, n: int, seed: int, name: str) -> Path:
    src = out / f"{name}-prompts.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in prompts(n, seed)))
    gen = TeacherGeneration(max_new_tokens=96, temperature=1.0, seed=seed, batch_size=32)
    teacher = Teacher(str(TEACHER), gen)
    report = distill_dataset(DatasetConfig(path=str(src)), teacher, out / f"{name}.jsonl")
    teacher.close()
    print(f"teacher data {name}: {report['written']} records, {report['truncated']} cut at max_new_tokens")
    return out / f"{name}.jsonl"


def student_folder(out: Path, layers: int = 2, seed: int = 0) -> Path:
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    cfg = AutoConfig.from_pretrained(TEACHER)
    cfg.num_hidden_layers = layers
    torch.manual_seed(seed)
    folder = out / "student-init"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(TEACHER).save_pretrained(folder)
    return folder


def held_out(model_dir: Path, teacher: torch.nn.Module, eval_path: Path) -> dict[str, float]:
    """Per-token forward KL to the teacher, CE on the teacher's text, top-1 agreement (T = 1)."""
    cfg = RunConfig.model_validate({"model": {"name_or_path": str(model_dir)},
                                    "data": {"train": [{"path": str(eval_path)}], "max_length": 256, "check": None}})  # fmt: skip
    from tunelab.models.load import load_model, load_tokenizer

    tok, model = load_tokenizer(cfg.model), load_model(cfg.model).eval()
    items = prepare(cfg, tok, use_cache=False).train
    method = distill.build(MethodConfig(name="distill", distill={"teacher": "t"}), teacher)  # type: ignore[arg-type]
    sums: dict[str, float] = {}
    with torch.no_grad():
        for s in range(0, len(items), 16):
            out = method.loss(model, method.collate(items[s : s + 16], tok.pad_token_id))
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
    n = sum(method.count(x) for x in items)
    return {k: round(v / n, 4) for k, v in sums.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=int, default=256)
    ap.add_argument("--eval", type=int, default=48)
    ap.add_argument("--epochs", type=float, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    train_path, eval_path = teacher_data(args.out, args.train, 0, "train"), teacher_data(args.out, args.eval, 1, "eval")
    init = student_folder(args.out)
    teacher = distill.frozen(distill.teacher_model(str(TEACHER), RunConfig().model)[0])
    results = {"init": held_out(init, teacher, eval_path)}
    print("init", results["init"])
    for label, method in VARIANTS.items():
        cfg = RunConfig.model_validate({
            "model": {"name_or_path": str(init)}, "tuning": {"mode": "full"},
            "method": method if method["name"] == "sft" else {**method, "distill": {**method["distill"], "teacher": str(TEACHER)}},
            "data": {"train": [{"path": str(train_path)}], "max_length": 256, "packing": True, "check": None},
            "train": {"epochs": args.epochs, "batch_size": 8, "lr": args.lr, "warmup_ratio": 0.05, "threads": 1,
                      "log_every": 10},
            "eval": {"baseline": False, "metrics": [], "forgetting": {"enabled": False}},
            "output": {"dir": str(args.out / "runs"), "name": label.split(" (")[0].replace(" ", "-"),
                       "overwrite": True},
        })  # fmt: skip
        start = time.perf_counter()
        run = train(cfg)
        results[label] = held_out(run / "final", teacher, eval_path) | {"seconds": round(time.perf_counter() - start)}
        print(label, results[label])
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print("| variant | held-out KL to teacher | CE on teacher text | top-1 agreement | s |\n|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['kl']} | {r['ce']} | {r['top1_agreement']} | {r.get('seconds', '')} |")


if __name__ == "__main__":
    main()
