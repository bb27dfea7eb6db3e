"""augment: seeded simple methods, and model methods through the real `openai` client to a local server."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tests.unit.quality.chat_server import chat_server

from tunelab.errors import TunelabError
from tunelab.quality.augment import AugmentOptions, EndpointOptions, augment, random_deletion, random_swap
from tunelab.quality.check import check


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture
def intents(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "intents.jsonl",
        [
            {"text": "where is my new card it has not arrived yet", "label": "card_arrival"},
            {"text": "my card still has not come in the post", "label": "card_arrival"},
            {"text": "how can I add money to my account", "label": "top_up"},
            {"text": "top up failed twice this morning", "label": "top_up"},
        ],
    )


def test_simple_methods_are_seeded_and_keep_labels(intents: Path, tmp_path: Path) -> None:
    opts = AugmentOptions(
        methods=["delete", "swap", "template"], templates=["Hi! {text} Thanks {you}"], seed=7
    )
    a = augment(str(intents), str(tmp_path / "a.jsonl"), opts)
    b = augment(str(intents), str(tmp_path / "b.jsonl"), opts)
    assert Path(a.output).read_bytes() == Path(b.output).read_bytes()
    rows = _rows(a.output)
    synthetic = [r for r in rows if "_synthetic" in r]
    assert len(rows) == 4 + len(synthetic) and a.generated["template"] == 4
    assert sum(a.generated.values()) + sum(a.discarded.values()) == 12
    for r in synthetic:
        source = next(
            o for o in rows[:4] if o["text"] in r["text"] or set(r["text"].split()) <= set(o["text"].split())
        )
        assert r["label"] == source["label"] and r["_source"].endswith(f":{rows.index(source) + 1}")
    assert {r["text"] for r in synthetic if r["_synthetic"] == "template"} >= {
        "Hi! how can I add money to my account Thanks {you}"
    }


def test_word_operations() -> None:
    rng = random.Random(0)
    text = "one two three four five six"
    assert sorted(random_swap(text, 2, rng).split()) == sorted(text.split())
    deleted = random_deletion(text, 0.5, rng).split()
    assert 1 <= len(deleted) < 6 and all(w in text.split() for w in deleted)
    assert random_deletion("single", 0.99, rng) == "single"


def test_paraphrase_and_backtranslate_through_a_real_server(intents: Path, tmp_path: Path) -> None:
    with chat_server() as (url, requests):
        ep = EndpointOptions(base_url=url, model="local-model", api_key="sk-test")
        res = augment(
            str(intents),
            str(tmp_path / "o.jsonl"),
            AugmentOptions(methods=["paraphrase", "backtranslate"], endpoint=ep),
        )
    rows = _rows(res.output)
    para = [r for r in rows if r.get("_synthetic") == "paraphrase"]
    back = [r for r in rows if r.get("_synthetic") == "backtranslate"]
    assert para[0] == {
        "text": "In other words: where is my new card it has not arrived yet",
        "label": "card_arrival",
        "_synthetic": "paraphrase",
        "_source": f"{intents}:1",
    }
    assert back[2]["text"] == "[English] how can I add money to my account" and back[2]["label"] == "top_up"
    assert len(requests) == 4 + 8  # one per paraphrase, two per back-translation
    assert {r["model"] for r in requests} == {"local-model"} and requests[0]["auth"] == "Bearer sk-test"
    assert "French" in requests[4]["messages"][-1]["content"]


def test_synthesize_keeps_labels_and_answers_sft_rows(intents: Path, tmp_path: Path) -> None:
    sft = _write(
        tmp_path / "sft.jsonl",
        [{"instruction": f"Explain topic {i}", "output": f"Topic {i} is..."} for i in range(3)],
    )
    with chat_server() as (url, requests):
        ep = EndpointOptions(base_url=url, model="m")
        res = augment(
            str(intents),
            str(tmp_path / "s.jsonl"),
            AugmentOptions(methods=["synthesize"], num_generate=4, endpoint=ep),
        )
        res_sft = augment(
            str(sft),
            str(tmp_path / "t.jsonl"),
            AugmentOptions(methods=["synthesize"], num_generate=2, endpoint=ep),
        )
    new = [r for r in _rows(res.output) if r.get("_synthetic")]
    assert [r["label"] for r in new] == ["card_arrival", "top_up", "card_arrival", "top_up"]
    assert all(r["text"].endswith(f"about {r['label']}") for r in new)
    new_sft = [r for r in _rows(res_sft.output) if r.get("_synthetic")]
    assert len(new_sft) == 2 and all(r["output"] == f"Answer to: {r['instruction']}" for r in new_sft)
    assert check([res_sft.output]).exit_code == 0


def test_self_instruct_dedups_against_existing_data(tmp_path: Path) -> None:
    seeds = _write(
        tmp_path / "seeds.jsonl",
        [
            {"instruction": "Write a haiku about the sea", "output": "Waves fold into foam..."},
            {"instruction": "Name three uses for a paperclip", "output": "Hold paper, reset, pick."},
        ],
    )
    with chat_server() as (url, _):
        res = augment(
            str(seeds),
            str(tmp_path / "si.jsonl"),
            AugmentOptions(
                methods=["self_instruct"], num_generate=4, endpoint=EndpointOptions(base_url=url, model="m")
            ),
        )
    new = [r for r in _rows(res.output) if r.get("_synthetic") == "self_instruct"]
    assert len(new) == 4 and res.generated["self_instruct"] == 4
    assert not any("haiku" in r["instruction"] for r in new)  # copy and near-copy of a seed rejected
    assert res.discarded["self_instruct"] >= 4  # two per reply, two replies at least
    assert all(r["output"].startswith("Answer to: ") for r in new)


def test_model_method_errors_are_clear(intents: Path, tmp_path: Path) -> None:
    with pytest.raises(TunelabError, match="needs an endpoint"):
        augment(str(intents), str(tmp_path / "x.jsonl"), AugmentOptions(methods=["paraphrase"]))
    dead = EndpointOptions(base_url="http://127.0.0.1:9/v1", model="m", timeout=2)
    with pytest.raises(TunelabError, match=r"request to http://127.0.0.1:9/v1 failed"):
        augment(
            str(intents), str(tmp_path / "x.jsonl"), AugmentOptions(methods=["paraphrase"], endpoint=dead)
        )
    with pytest.raises(TunelabError, match="unknown augmentation"):
        augment(str(intents), str(tmp_path / "x.jsonl"), AugmentOptions(methods=["magic"]))
