"""tunelab retrain refuses, before training anything, what could not give a gated run: not a run, not an export, an
export edited since it was written, a kind the export lacks, a holdout that leaves nothing on one side, a run
without eval set files. And the split holds out whole prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.config import RunConfig, dump_config
from tunelab.errors import TunelabError
from tunelab.feedback.retrain import RetrainOptions, retrain, split
from tunelab.quality.io import sha256_file


def make_run(root: Path, with_eval: bool) -> Path:
    run = root / ("run" if with_eval else "run-no-eval")
    (run / "final").mkdir(parents=True)
    (root / "eval.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    data = {"eval": [{"path": str(root / "eval.jsonl")}]} if with_eval else {"eval_ratio": 0.1}
    cfg = RunConfig.model_validate({"model": {"name_or_path": "tiny"}, "data": data})
    (run / "config.yaml").write_text(dump_config(cfg))
    return run


def make_export(root: Path, prompts: list[str]) -> Path:
    out = root / "fb"
    out.mkdir()
    rows = [{"prompt": [{"role": "user", "content": p}], "completion": f"answer {i}"} for i, p in enumerate(prompts)]
    (out / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = {"sft": {"path": "sft.jsonl", "rows": len(rows), "sha256": sha256_file(out / "sft.jsonl")}}
    (out / "export.json").write_text(json.dumps({"files": files}))
    return out


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    run, fb = make_run(tmp_path, True), make_export(tmp_path, ["p1", "p2"])
    with pytest.raises(TunelabError, match="not a run directory"):
        retrain(tmp_path / "nope", fb)
    with pytest.raises(TunelabError, match="no eval set files .data.eval or eval.data."):
        retrain(make_run(tmp_path, False), fb)
    with pytest.raises(TunelabError, match="not a feedback export .no export.json"):
        retrain(run, tmp_path)
    with pytest.raises(TunelabError, match="--kind kto: the export has no kto rows .it has sft."):
        retrain(run, fb, RetrainOptions(kind="kto"))
    with pytest.raises(TunelabError, match="--holdout 0.9: 2 distinct prompt.s. in the export"):
        retrain(run, fb, RetrainOptions(holdout=0.9))
    with (fb / "sft.jsonl").open("a") as f:
        f.write(json.dumps({"prompt": "p3", "completion": "edited by hand"}) + "\n")
    with pytest.raises(TunelabError, match="changed since it was exported"):
        retrain(run, fb)


def test_split_holds_out_whole_prompts() -> None:
    rows = [{"prompt": f"p{i % 10}", "completion": f"a{i}"} for i in range(40)]  # each prompt 4 times
    train, held = split(rows, "sft", RetrainOptions(holdout=0.3, seed=3))
    assert len({r["prompt"] for r in held}) == 3 and len(train) + len(held) == 40
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert split(rows, "sft", RetrainOptions(holdout=0.3, seed=3)) == (train, held)  # seeded
