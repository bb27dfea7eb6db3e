"""tunelab drift on a real SQLite store against a run trained on the quickstart task: prompts of another task are
flagged (with a new cluster shown), fresh prompts of the same task are not; rates per bucket; the CLI's exit
status. Both feature kinds: hashed n-grams and the packaged sentence encoder."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tests.conftest import run_cli

from tunelab.config import RunConfig, dump_config
from tunelab.data.quickstart_task import SYSTEM, write_splits
from tunelab.errors import TunelabError
from tunelab.feedback.drift import DriftOptions, drift
from tunelab.serve.store import Store

OTHER = ["What is {a} plus {b}?", "Translate 'good morning' to French, number {a}.", "Write a haiku about rain {a}.",
         "Summarize chapter {a} of the book in {b} words.", "Is {a} a prime number?"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as drift reads it (config.yaml naming the quickstart training data); no training needed."""
    root = tmp_path_factory.mktemp("drift")
    splits = write_splits(root / "data")
    head = root / "train.jsonl"
    head.write_text("".join(splits["train"].read_text().splitlines(keepends=True)[:300]))
    (root / "run").mkdir()
    cfg = RunConfig.model_validate({"model": {"name_or_path": "tiny"}, "data": {"train": [{"path": str(head)}]}})
    (root / "run" / "config.yaml").write_text(dump_config(cfg))
    return root / "run"


def store_of(tmp: Path, prompts: list[str], name: str) -> str:
    url = f"sqlite:///{tmp / f'{name}.db'}"
    store = Store(url)
    for i, text in enumerate(prompts):
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
        answer = '{"intent": "refund", "item": "phone", "priority": "normal"}' if i % 4 else "not json"
        store.log_request(f"r{i}", api_key_id="k", endpoint="/v1/chat/completions", model="support", adapter=None,
                          request={"messages": msgs}, response_text=answer, finish_reason="stop", prompt_tokens=1,
                          completion_tokens=1, latency_ms=1.0, status=200, decisions=[])  # fmt: skip
    store.close()
    return url


def same_task(run: Path, n: int) -> list[str]:
    """The task's test split: the same generator, order ids and customer names the training data never had."""
    rows = (run.parent / "data" / "test.jsonl").read_text().splitlines()[:n]
    return [json.loads(r)["messages"][1]["content"] for r in rows]


def other_task(n: int) -> list[str]:
    rng = random.Random(5)
    return [rng.choice(OTHER).format(a=rng.randint(2, 999), b=rng.randint(2, 99)) for _ in range(n)]


@pytest.mark.parametrize("features", ["ngrams", "embeddings"])
def test_another_task_drifts_and_the_same_task_does_not(run: Path, tmp_path: Path, features: str) -> None:
    options = DriftOptions(sample=150, permutations=200, features=features)
    same = drift(store_of(tmp_path, same_task(run, 60), "same"), run, options)
    assert not same.drift and same.features.startswith(features) and same.n_production == 60
    other = drift(store_of(tmp_path, other_task(60), "other"), run, options)
    assert other.drift and other.p_value < same.p_value and other.energy > same.energy
    assert other.novel_share > same.novel_share and other.clusters and other.clusters[0]["size"] >= 2
    assert all(e in other_task(60) for e in other.clusters[0]["examples"])
    assert other.expects_json and [(r["requests"], r["unparseable"]) for r in other.rates] == [(60, 15)]


def test_cli_exit_status_and_errors(run: Path, tmp_path: Path) -> None:
    db = store_of(tmp_path, other_task(40), "other").removeprefix("sqlite:///")
    r = run_cli("drift", "--store", db, "--against", str(run), "--features", "ngrams", "--sample", "100",
                "--out", str(tmp_path / "report"), check=False)  # fmt: skip
    assert r.returncode == 1 and "**DRIFT**" in r.stdout, r.stdout + r.stderr
    assert json.loads((tmp_path / "report" / "drift.json").read_text())["drift"] is True
    with pytest.raises(TunelabError, match="1 answered request.s. in the window; need at least 2"):
        drift(store_of(tmp_path, other_task(1), "one"), run)
    with pytest.raises(TunelabError, match="--features words: expected auto, embeddings or ngrams"):
        drift(store_of(tmp_path, other_task(5), "five"), run, DriftOptions(features="words"))
