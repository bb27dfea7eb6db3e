"""A real fine-tune of the pretrained stories260k on stories in a new style, and its exact greedy output.

The stories are generated here from templates (robots on the moon: a style the model has not seen);
training lowers the held-out perplexity of that style. Before training, greedy decoding from BOS must
reproduce the model card's reference text byte for byte, which checks the generation path.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch
from tests.conftest import shared_path
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.api import generate, train
from tunelab.config import load_config
from tunelab.data.tokenize import Example
from tunelab.methods import default_method
from tunelab.models.loader import load_run

NAMES = ["Zib", "Tork", "Pleep", "Vexa", "Quon", "Mizzo", "Brask", "Elto"]
PARTS = ["antenna", "gear", "wheel", "bolt", "panel", "lamp"]
COLORS = ["silver", "blue", "copper", "golden", "green"]
PLACES = ["crater", "dome", "moon base", "dust hill", "launch pad"]


def story(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    part, color, place = rng.choice(PARTS), rng.choice(COLORS), rng.choice(PLACES)
    return (
        f"Robot {a} lived near the {place} on the moon. Every morning {a} polished a {color} {part}. "
        f'One day robot {b} rolled over and beeped, "My {part} is broken!" {a} beeped back, '
        f'"I will fix your {part}." {a} gave {b} the {color} {part}, and the two robots beeped happily.'
    )


def write(path: Path, rng: random.Random, n: int) -> Path:
    path.write_text("".join(json.dumps({"text": story(rng)}) + "\n" for _ in range(n)))
    return path


def perplexity(model: torch.nn.Module, tok, texts: list[str]) -> float:  # noqa: ANN001
    sft = default_method("sft")
    exs = [Example(ids, list(ids)) for ids in (tok(t).input_ids for t in texts)]
    with torch.no_grad():
        total = sum(sft.loss(model, sft.collate([e], pad_id=0)).loss_sum.item() for e in exs)
    return math.exp(total / sum(sft.count(e) for e in exs))


def test_greedy_from_bos_matches_reference() -> None:
    path = shared_path("models", "stories260k")
    reference = (path / "reference_greedy.txt").read_text()
    assert AutoTokenizer.from_pretrained(str(path))("").input_ids == [1]  # an empty prompt is just BOS
    assert generate(str(path), prompt="", max_new_tokens=256) == reference


def test_finetune_lowers_heldout_perplexity_on_new_style(tmp_path: Path) -> None:
    path = shared_path("models", "stories260k")
    rng = random.Random(0)
    train_file, eval_file = write(tmp_path / "train.jsonl", rng, 200), write(tmp_path / "eval.jsonl", rng, 30)
    held_out = [json.loads(line)["text"] for line in eval_file.read_text().splitlines()]
    cfg = load_config(None, [
        f"model.name_or_path={path}", "tuning.mode=full",
        f"data.train=[{{path: {train_file}, format: text}}]", f"data.eval=[{{path: {eval_file}, format: text}}]",
        "data.max_length=256", "data.packing=true", "train.batch_size=4", "train.epochs=1", "train.lr=5e-3",
        "train.warmup_ratio=0.1", "train.log_every=5", "train.threads=1", f"output.dir={tmp_path / 'runs'}", "output.name=moon",
    ])  # fmt: skip
    base = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    before = perplexity(base, tok, held_out)
    run = train(cfg)
    tuned, tuned_tok = load_run(run)
    after = perplexity(tuned.eval(), tuned_tok, held_out)
    print(f"held-out perplexity {before:.2f} -> {after:.2f}")
    assert after < 0.5 * before, (before, after)
    assert tuned_tok.chat_template is None  # plain-text training adds no chat template
    assert "on the moon" in generate((tuned, tuned_tok), prompt="Robot", max_new_tokens=40)
