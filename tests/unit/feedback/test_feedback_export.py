"""tunelab feedback export over a real SQLite serve store: which interactions become sft, preference and kto rows,
what is left out and why (counted), PII redaction, dedup against the run's training data, leakage against its eval
sets, provenance on every row, and the CLI verb's output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import run_cli

from tunelab.config import RunConfig, dump_config
from tunelab.errors import TunelabError
from tunelab.feedback.export import ExportOptions, export
from tunelab.serve.review import ReviewQueue
from tunelab.serve.store import Store

TRAIN_PROMPT = "My order 111 laptop arrived broken."
EVAL_PROMPT = "Where is order 222? The headphones are late."


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Reply in JSON."}, {"role": "user", "content": text}]


def log(store: Store, rid: str, messages: list[dict], answer: str) -> None:
    store.log_request(rid, api_key_id="alice", endpoint="/v1/chat/completions", model="support", adapter="support",
                      request={"messages": messages}, response_text=answer, finish_reason="stop", prompt_tokens=5,
                      completion_tokens=5, latency_ms=1.0, status=200, decisions=[])  # fmt: skip


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """Interactions of every kind, with user feedback and review decisions."""
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    store = Store(url)
    q = ReviewQueue(store)
    try:
        log(store, "r-edit", chat("Refund for order 333, the kettle leaks."), '{"intent": "order_status"}')
        store.add_feedback("r-edit", -1, '{"intent": "refund"}', "wrong intent")
        q.decide("r-edit", "edit", "ana", '{"intent": "refund"}')
        log(store, "r-ok", chat("Cancel order 444 please."), '{"intent": "cancel"}')
        q.decide("r-ok", "approve", "ana")
        log(store, "r-ok-again", chat("Cancel order 444 please."), '{"intent": "cancel"}')  # the same pair again
        q.decide("r-ok-again", "approve", "bo")
        log(store, "r-bad", chat("Cancel order 444 please."), '{"intent": "refund"}')  # a bad answer, same prompt
        q.decide("r-bad", "reject", "bo")
        log(store, "r-rated", chat("Order 555: the blender is missing a part."), '{"intent": "complaint"}')
        store.add_feedback("r-rated", 1, None, None)  # a user's thumbs up, no review
        log(store, "r-none", chat("Hello?"), "{}")  # no feedback, no review
        log(store, "r-skip", chat("Order 666 question."), "{}")
        q.decide("r-skip", "skip", "ana")
        log(store, "r-pii", chat("Mail me at jane.doe@example.com about order 777."), '{"intent": "order_status"}')
        q.decide("r-pii", "approve", "ana")
        log(store, "r-train", chat(TRAIN_PROMPT), '{"intent": "refund"}')
        q.decide("r-train", "approve", "ana")
        log(store, "r-eval", chat(EVAL_PROMPT), '{"intent": "order_status"}')
        q.decide("r-eval", "approve", "ana")
        tool = [*chat("Track 888"), {"role": "tool", "content": "shipped", "tool_call_id": "c1"}]
        log(store, "r-tool", tool, "{}")
        q.decide("r-tool", "approve", "ana")
    finally:
        store.close()
    return url


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run folder as the export reads it: config.yaml naming training and eval data."""
    run = tmp_path / "run"
    run.mkdir()
    for name, text in (("train", TRAIN_PROMPT), ("eval", EVAL_PROMPT)):
        row = {"messages": [*chat(text), {"role": "assistant", "content": '{"intent": "x"}'}]}
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    cfg = RunConfig.model_validate(
        {
            "model": {"name_or_path": "tiny"},
            "data": {
                "train": [{"path": str(tmp_path / "train.jsonl")}],
                "eval": [{"path": str(tmp_path / "eval.jsonl")}],
            },
        }
    )
    (run / "config.yaml").write_text(dump_config(cfg))
    return run


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def users(rs: list[dict]) -> list[str]:
    return [r["prompt"][-1]["content"] for r in rs]


def test_rows_counts_and_provenance(store_url: str, run: Path, tmp_path: Path) -> None:
    out = tmp_path / "fb"
    m = export(store_url, out, ExportOptions(against=str(run)))
    assert m["items"] == 11 and m["not_exported"] == {"not_reviewed": 1, "skipped": 1, "unsupported_prompt": 1}
    sft = rows(out / "sft.jsonl")
    assert [(r["provenance"]["request_id"], r["completion"]) for r in sft] == [
        ("r-edit", '{"intent": "refund"}'),
        ("r-ok", '{"intent": "cancel"}'),
        ("r-pii", '{"intent": "order_status"}'),
    ]
    assert m["dropped"]["sft"] == {"duplicate": 1, "in_training": 1, "leak_exact": 1, "leak_near": 0}
    assert "jane.doe@example.com" not in (out / "sft.jsonl").read_text() and m["redacted"] == {"email": 1}
    edit = sft[0]["provenance"]
    assert (
        edit["source"] == "review" and edit["decision"] == "edit" and edit["reviewer"] == "ana" and edit["decided_at"]
    )

    pairs = rows(out / "preference.jsonl")
    assert [(r["chosen"], r["rejected"]) for r in pairs] == [
        ('{"intent": "refund"}', '{"intent": "order_status"}'),  # the edit over the original
        ('{"intent": "cancel"}', '{"intent": "refund"}')]  # an approved answer over a rejected one  # fmt: skip
    assert pairs[1]["provenance"]["rejected"]["request_id"] == "r-bad"

    kto = rows(out / "kto.jsonl")
    labels = {(r["provenance"]["request_id"], r["label"]) for r in kto}
    assert ("r-rated", True) in labels and ("r-bad", False) in labels and ("r-edit", False) in labels
    assert next(r for r in kto if r["provenance"]["request_id"] == "r-rated")["provenance"]["source"] == "rating"
    assert "Cancel order 444" not in json.dumps([r for r in kto if r["provenance"]["request_id"] == "r-ok-again"])

    for kind, f in m["files"].items():
        assert f["rows"] == len(rows(out / f"{kind}.jsonl")) and len(f["sha256"]) == 64
    card = (out / "data_card.md").read_text()
    assert "## Provenance" in card and "| sft | 3 | duplicate 1, in_training 1, leak_exact 1 |" in card


def test_without_a_run_and_reviewed_only(store_url: str, tmp_path: Path) -> None:
    m = export(store_url, tmp_path / "fb", ExportOptions(ratings=False, kinds=("sft", "kto")))
    assert set(m["files"]) == {"sft", "kto"} and m["not_exported"]["not_reviewed"] == 2  # the rated one too
    assert users(rows(tmp_path / "fb" / "sft.jsonl"))[-2:] == [TRAIN_PROMPT, EVAL_PROMPT]  # nothing to check against
    with pytest.raises(TunelabError, match="fb/export.json exists: choose another folder or pass --overwrite"):
        export(store_url, tmp_path / "fb")
    with pytest.raises(TunelabError, match="--kinds: unknown kind.s. dpo"):
        export(store_url, tmp_path / "fb2", ExportOptions(kinds=("dpo",)))


def test_nothing_to_export_says_why(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    store = Store(url)
    log(store, "r1", chat("Hi"), "{}")
    store.close()
    with pytest.raises(
        TunelabError, match=r"nothing to export: 1 item\(s\) matched, none gave a row \(not_reviewed 1\)"
    ):
        export(url, tmp_path / "fb")


def test_cli_export(store_url: str, run: Path, tmp_path: Path) -> None:
    db = store_url.removeprefix("sqlite:///")
    r = run_cli("feedback", "export", str(tmp_path / "fb"), "--store", db, "--against", str(run), check=False)
    assert r.returncode == 0, r.stderr
    assert "sft: 3 rows" in r.stdout and "(dropped: duplicate 1, in_training 1, leak_exact 1)" in r.stdout
    stats = run_cli("feedback", "stats", "--store", db, check=False)
    assert "11 requests, 11 answered" in stats.stdout, stats.stdout + stats.stderr
    missing = run_cli("feedback", "export", str(tmp_path / "x"), "--store", str(tmp_path / "nope.db"), check=False)
    assert (
        missing.returncode == 2 and "nope.db: no such database" in missing.stderr and "Traceback" not in missing.stderr
    )


def test_terminal_review(store_url: str) -> None:
    """`tunelab feedback review` in-process, one line per decision from stdin, stored as the API stores them."""
    from typer.testing import CliRunner

    from tunelab.cli import app

    keys = 'c\na looks right\ne\n{"intent": "greeting"}\n.\nr\n'  # r-rated has no correction: c is refused
    db = store_url.removeprefix("sqlite:///")
    r = CliRunner().invoke(app, ["feedback", "review", "--store", db, "--reviewer", "cy"], input=keys)
    assert r.exit_code == 0, r.output
    assert "3 item(s) to review as cy" in r.output and "no corrected answer from the user" in r.output
    assert "reviewed: approve 1, edit 1, reject 1; 0 left in the queue" in r.output
    store = Store(store_url)
    try:
        q = ReviewQueue(store)
        got = {rid: q.item(rid)["review"] for rid in ("r-rated", "r-none", "r-skip")}
    finally:
        store.close()
    assert [(v["decision"], v["reviewer"]) for v in got.values()] == [
        ("approve", "cy"),
        ("edit", "cy"),
        ("reject", "cy"),
    ]
    assert got["r-rated"]["note"] == "looks right" and got["r-none"]["answer"] == '{"intent": "greeting"}'
