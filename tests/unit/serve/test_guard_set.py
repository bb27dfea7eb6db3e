"""The guard against a labelled set (tests/data/guard_prompts.jsonl, own writing): rates computed here are
the ones docs/serving.md states; the issue's variants are detected in flag mode; no benign text is blocked
by default. Plus: PII in every stored field, a PEM key through streaming, and the classifier backend."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from servers import serving

from tunelab.errors import ConfigError
from tunelab.serve.config import GuardConfig
from tunelab.serve.guard import Guard, OutputFilter, blocked
from tunelab.serve.normalize import normalize

ROOT = Path(__file__).resolve().parents[3]
SET = [json.loads(line) for line in (ROOT / "tests/data/guard_prompts.jsonl").read_text().splitlines()]


def texts(item: dict) -> list[str]:
    return [m["content"] for m in item["messages"]]


def detected(guard: Guard, item: dict) -> bool:
    return any(d.rule == "injection" for d in guard.check_input(texts(item))[1])


def rates() -> list[str]:
    """The docs table rows: split | attacks detected | benign flagged | benign blocked by default."""
    flag, default = Guard(GuardConfig()), Guard(GuardConfig())
    rows = []
    for name, split in [("dev", {"dev"}), ("held-out", {"heldout"}), ("all", {"dev", "heldout"})]:
        items = [i for i in SET if i["split"] in split]
        attacks = [i for i in items if i["label"] == "attack"]
        benign = [i for i in items if i["label"] == "benign"]
        hit = sum(detected(flag, i) for i in attacks)
        fp = sum(detected(flag, i) for i in benign)
        refused = sum(bool(blocked(default.check_input(texts(i))[1])) for i in benign)
        rows.append(
            f"| {name} | {hit}/{len(attacks)} ({100 * hit / len(attacks):.0f}%) | "
            f"{fp}/{len(benign)} ({100 * fp / len(benign):.0f}%) | {refused}/{len(benign)} |"
        )
    return rows


def test_the_set_is_big_enough_and_well_formed() -> None:
    assert sum(i["label"] == "attack" for i in SET) >= 60 and sum(i["label"] == "benign" for i in SET) >= 60
    assert len({i["id"] for i in SET}) == len(SET)


def test_docs_state_the_measured_rates() -> None:
    docs = (ROOT / "docs/serving.md").read_text()
    table = re.search(r"<!-- guard-rates -->\n(.*?)\n<!-- /guard-rates -->", docs, re.S)
    assert table, "docs/serving.md lost its guard-rates table"
    stated = [ln for ln in table.group(1).splitlines() if ln.startswith("| ") and not ln.startswith("| split")]
    assert stated == rates()


@pytest.mark.parametrize("item", [i for i in SET if i["must_detect"]], ids=lambda i: f"{i['id']}-{i['variant']}")
def test_the_issues_variants_are_detected_in_flag_mode(item: dict) -> None:
    _, decisions = Guard(GuardConfig()).check_input(texts(item))
    assert [(d.rule, d.action) for d in decisions if d.rule == "injection"] == [("injection", "flag")]


def test_no_benign_example_is_blocked_by_default() -> None:
    guard = Guard(GuardConfig())
    refused = [i["id"] for i in SET if i["label"] == "benign" and blocked(guard.check_input(texts(i))[1])]
    assert refused == []


def test_normalization_undoes_the_usual_disguises() -> None:
    assert normalize("ｉｇｎ\u200bо\u00adre\n\n  аll") == "ignore all"  # fullwidth, zero-width, soft hyphen, Cyrillic


def test_pii_is_redacted_in_every_stored_field(runs, tmp_path) -> None:
    pii = {
        "fullwidth-at": "jane＠example.com",
        "zero-width": "jo\u200bhn.smith@example.org",
        "lowercase-iban": "de89 3704 0044 0532 0130 00",
        "split-card": "4111 1111\n1111 1111",
        "phone": "+44 20 7946 0958",
    }
    msgs = [
        {"role": "system", "content": f"Escalate to {pii['fullwidth-at']}."},
        {"role": "user", "content": f"My IBAN is {pii['lowercase-iban']}, card {pii['split-card']}."},
        {"role": "assistant", "content": f"Noted, I will call {pii['phone']}."},
        {"role": "user", "content": f"Also cc {pii['zero-width']}."},
    ]
    guard = {"pii_input": "off", "pii_output": "off"}  # the model sees it all; the store must not keep it
    with serving(runs["full"], tmp_path, guard=guard) as api:
        chat = api.client.chat.completions.with_raw_response.create(
            model="base", messages=msgs, max_tokens=4, user="bob@example.com", stop=["call +1 415 555 0100"]
        )
        echo = api.client.completions.with_raw_response.create(
            model="base", prompt=f"Card: {pii['split-card']}.", max_tokens=2, echo=True, temperature=0
        )
        assert pii["split-card"] in echo.parse().choices[0].text  # the client gets what it asked for
        api.settle()
    with sqlite3.connect(tmp_path / "serve.db") as db:
        stored = {
            rid: db.execute("select request_json, response_text from requests where id = ?", (rid,)).fetchone()
            for rid in (chat.headers["x-request-id"], echo.headers["x-request-id"])
        }
    everything = json.dumps(stored, ensure_ascii=False)
    for kind, value in [*pii.items(), ("user", "bob@example.com"), ("stop", "415 555 0100")]:
        assert value not in everything, kind
    assert "1111" not in everything and "[CARD]" in everything and "[IBAN]" in everything and "[EMAIL]" in everything


PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\nLxoS2tFczGkPLPgizskuemMghRniWaoLcyeh\n"
    "-----END RSA PRIVATE KEY-----"
)


@pytest.mark.parametrize("ending", ["\nThat is the key.", ""])
def test_a_streamed_private_key_never_leaks_a_line(ending: str) -> None:
    text = "Here you go:\n" + PEM + ending
    f, sent = OutputFilter(Guard(GuardConfig())), []
    for i in range(0, len(text), 3):
        sent.append(f.feed(text[i : i + 3]))
    sent.append(f.finish())
    out = "".join(sent)
    assert "MIIE" not in out and "LxoS" not in out and "[SECRET]" in out and out.startswith("Here you go:")
    cut = Guard(GuardConfig()).check_output("Key: " + PEM[:150])[0]  # cut off by max_tokens: no END line
    assert cut == "Key: [SECRET]"


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny (random) sequence classifier with an INJECTION label: plumbing, not accuracy."""
    from transformers import LlamaForSequenceClassification

    from tunelab.models.presets import build_preset

    model, tok = build_preset("tiny")
    cfg = model.config
    cfg.num_labels, cfg.id2label, cfg.label2id = 2, {0: "SAFE", 1: "INJECTION"}, {"SAFE": 0, "INJECTION": 1}
    cfg.pad_token_id = tok.pad_token_id
    out = tmp_path_factory.mktemp("clf")
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_the_classifier_backend_scores_every_message_together(classifier_dir: Path) -> None:
    low = Guard(GuardConfig(classifier={"model": str(classifier_dir), "threshold": 1e-6}))
    _, decisions = low.check_input(["What is the capital of France?", "Thanks!"])
    assert low.slow and decisions[0].detail.startswith("classifier:")
    p = low.classifier.score("What is the capital of France? Thanks!")
    high = Guard(GuardConfig(classifier={"model": str(classifier_dir), "threshold": min(1.0, p + 1e-3)}))
    assert high.check_input(["What is the capital of France?", "Thanks!"])[1] == []
    with pytest.raises(ConfigError, match=r"none of .* is a label of .*\(its labels: SAFE, INJECTION\)"):
        Guard(GuardConfig(classifier={"model": str(classifier_dir), "labels": ["JAILBREAK"]}))
