"""Model cards: a real (tiny) training run writes final/README.md after its closing evaluation, and every export
folder gets one; each figure on the card is checked against the run's own files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tests.conftest import REPO

from tunelab.api import train
from tunelab.config import load_config
from tunelab.eval.card_text import num
from tunelab.export.exporters import export
from tunelab.export.verify import verify

EVAL_ROWS = [  # not in the training file: the data check would stop the run on a leak
    {"instruction": "Reverse the word.", "input": "lamp", "output": "pmal"},
    {"instruction": "Add 3 and 4.", "input": "", "output": "3 + 4 = 7"},
    {"instruction": "Write the plural of cat.", "input": "", "output": "cats"},
    {"instruction": "What color is the hat?", "input": "The hat is red.", "output": "The hat is red."},
    {"instruction": "Reverse the word.", "input": "tree", "output": "eert"},
    {"instruction": "Add 12 and 30.", "input": "", "output": "12 + 30 = 42"},
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("card")
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EVAL_ROWS))
    cfg = load_config(REPO / "examples" / "sft-lora.yaml", [
        f"output.dir={root}", "output.name=card-run", "train.max_steps=4", "train.eval_every=4",
        "train.save_every=null", "train.threads=1", "eval.metrics=[exact_match,chrf]", "eval.max_new_tokens=8",
        "eval.bootstrap_resamples=200", f"eval.data=[{{path: {root / 'eval.jsonl'}, format: alpaca}}]",
    ])  # fmt: skip
    return train(cfg)


def split_card(path: Path) -> tuple[dict, str]:
    text = path.read_text()
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_final_card_replaces_peft_template_and_matches_the_run(run: Path) -> None:
    meta, body = split_card(run / "final" / "README.md")
    assert "More Information Needed" not in body
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert {"tunelab", "sft", "lora"} <= set(meta["tags"])
    assert "base_model" not in meta  # `tiny` is a preset, not a Hub id
    assert "`tiny` (a tunelab preset" in body
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    lora = cfg["tuning"]["lora"]
    assert f"`lora`: r {lora['r']}, alpha {num(lora['alpha'])}" in body
    assert f"| learning rate | {num(cfg['train']['lr'])}, {cfg['train']['schedule']} schedule" in body
    assert f"| length | {cfg['train']['max_steps']} steps |" in body
    for m in json.loads((run / "data_manifest.json").read_text()):
        assert f"| `{m['path']}` | alpaca | `{m['sha256']}` | {m['records']} | {m['train']} | {m['eval']} |" in body
    summary = json.loads((run / "data_check.json").read_text())["summary"]
    assert f"{summary['error']} errors, {summary['warning']} warnings, {summary['info']} info" in body
    for code, c in summary["by_code"].items():
        assert f"| {code} | " in body and f"| {c['problems']} | {c['records']} |" in body
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last_loss = [m for m in metrics if "loss" in m][-1]
    assert f"last logged training loss {num(last_loss['loss'])}" in body


def test_final_card_shows_the_comparison_and_forgetting_check(run: Path) -> None:
    _, body = split_card(run / "final" / "README.md")
    cmp = json.loads((run / "eval" / "comparison.json").read_text())
    assert len(cmp["rows"]) == 2
    for r in cmp["rows"]:
        base = f"{num(r['value_a'])} [{num(r['ci_a'][0])}, {num(r['ci_a'][1])}]"
        tuned = f"{num(r['value_b'])} [{num(r['ci_b'][0])}, {num(r['ci_b'][1])}]"
        diff = f"{r['diff']:+.4g} [{num(r['ci_low'])}, {num(r['ci_high'])}]"
        assert f"| {r['label']} | {base} | {tuned} | {diff} | {r['verdict']} |" in body
    assert f"same {len(EVAL_ROWS)} examples (`eval.jsonl`)" in body and "(200 resamples)" in body
    fg = json.loads((run / "eval" / "forgetting.json").read_text())
    assert f"went from {num(fg['before'])} to {num(fg['after'])} ({fg['relative_change']:+.1%}" in body


def test_export_cards_carry_the_run_and_the_parity_figures(run: Path, tmp_path: Path) -> None:
    merged = export(run, "merged", tmp_path / "merged")
    meta, body = split_card(merged / "README.md")
    assert meta["library_name"] == "transformers" and "the adapter merged into the base weights" in body
    assert "Not verified yet" in body
    report = verify(merged, run, prompts=["Reverse the word.\nkite"], max_new_tokens=4, record=True)
    _, body = split_card(merged / "README.md")  # refreshed by the verification
    saved = json.loads((merged / "verify.json").read_text())
    assert saved["max_abs_logit_diff"] == report.max_abs_logit_diff
    assert f"max |logit difference| {num(report.max_abs_logit_diff)}" in body and "-- passed." in body

    gguf = export(run, "gguf", tmp_path / "gguf", qtype="q4_0")
    meta, body = split_card(gguf / "README.md")
    info = json.loads((gguf / "export.json").read_text())
    assert meta["library_name"] == "gguf" and {"gguf", "q4_0"} <= set(meta["tags"])
    assert f"| format | gguf (q4_0), file `{info['file']}` |" in body
    assert f"pre-tokenizer `{info['pre_tokenizer']}`" in body and "template `chatml`" in body
    assert "rounded to q4_0" in body
    # the same sections the run's own card has
    _, final = split_card(run / "final" / "README.md")
    section = final[final.index("## Evaluation") : final.index("## Intended use")]
    assert section in body
