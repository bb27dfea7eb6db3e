"""The review queue through its HTTP API (real uvicorn, real SQLite, the openai client for traffic) and on a real
PostgreSQL (NUL-safe text); what the web UI and `tunelab feedback review` both use."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from servers import serving

from tunelab.serve.guard import Decision
from tunelab.serve.review import QueueFilter, ReviewError, ReviewQueue
from tunelab.serve.store import Store

CHAT = [{"role": "user", "content": "Where is my laptop? Order 12345."}]


def ask(srv, content: str) -> str:
    raw = srv.client.chat.completions.with_raw_response.create(
        model="lora-a", messages=[{"role": "user", "content": content}], max_tokens=4
    )
    return raw.headers["x-request-id"]


def test_queue_filters_decisions_and_stats_over_http(runs: dict[str, Path], tmp_path: Path) -> None:
    with serving(runs["lora"], tmp_path) as srv:
        ids = [ask(srv, f"message {i}") for i in range(3)]
        fb = srv.url + "/v1/feedback"
        httpx.post(fb, json={"request_id": ids[0], "rating": -1, "corrected": "better"}, headers=srv.auth)
        httpx.post(fb, json={"request_id": ids[1], "rating": 1}, headers=srv.auth)
        url = srv.url + "/admin/review"
        assert httpx.get(url + "/items", headers=srv.auth).status_code == 403  # a user key reads no one's data
        every = httpx.get(url + "/items", headers=srv.admin).json()["data"]
        assert [it["request_id"] for it in every] == ids  # oldest first
        assert every[0]["prompt"] == [{"role": "user", "content": "message 0"}] and every[0]["answer"]
        bad = httpx.get(url + "/items", params={"rating": -1}, headers=srv.admin).json()["data"]
        assert [(it["request_id"], it["corrected"]) for it in bad] == [(ids[0], "better")]
        no_fb = httpx.get(url + "/items", params={"feedback": "false"}, headers=srv.admin).json()["data"]
        assert [it["request_id"] for it in no_fb] == [ids[2]]

        r = httpx.post(f"{url}/items/{ids[0]}", json={"decision": "edit"}, headers=srv.admin)
        assert r.status_code == 400 and "answer" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/items/{ids[0]}", json={"decision": "edit", "answer": "fixed", "reviewer": "ana"},
                       headers=srv.admin)  # fmt: skip
        assert r.status_code == 200 and r.json()["reviewer"] == "ana" and r.json()["answer"] == "fixed"
        httpx.post(f"{url}/items/{ids[1]}", json={"decision": "approve"}, headers=srv.admin)
        httpx.post(f"{url}/items/{ids[2]}", json={"decision": "skip"}, headers=srv.admin)
        left = httpx.get(url + "/items", params={"unreviewed": "true"}, headers=srv.admin).json()["data"]
        assert [it["request_id"] for it in left] == [ids[2]]  # a skip stays in the queue
        one = httpx.get(f"{url}/items/{ids[0]}", headers=srv.admin).json()
        assert one["review"]["decision"] == "edit" and [h["decision"] for h in one["history"]] == ["edit"]
        assert one["review"]["reviewer"] == "ana"
        stats = httpx.get(url + "/stats", headers=srv.admin).json()
        assert stats["items"] == 3 and stats["with_feedback"] == 2 and stats["corrected"] == 1
        assert stats["ratings"] == {"-1": 1, "0": 0, "1": 1} and stats["unreviewed"] == 1
        assert stats["decisions"] == {"approve": 1, "edit": 1, "reject": 0, "skip": 1}
        missing = httpx.post(f"{url}/items/req-nope", json={"decision": "approve"}, headers=srv.admin)
        assert missing.status_code == 404
        assert httpx.post(f"{url}/items/{ids[1]}", json={"decision": "maybe"}, headers=srv.admin).status_code == 400
        newest = httpx.get(url + "/items", params={"order": "newest", "limit": 1}, headers=srv.admin).json()
        assert [it["request_id"] for it in newest["data"]] == [ids[2]]


def log(store: Store, rid: str, text: str, when_flags: list[Decision] | None = None, adapter: str | None = None):
    store.log_request(rid, api_key_id="k", endpoint="/v1/chat/completions", model=adapter or "base",
                      adapter=adapter, request={"messages": [{"role": "user", "content": text}]},
                      response_text=text.upper(), finish_reason="stop", prompt_tokens=1, completion_tokens=1,
                      latency_ms=1.0, status=200, decisions=when_flags or [])  # fmt: skip


def check_queue(store: Store) -> None:
    nul = "a\x00b \ue000 c"
    log(store, "r1", nul, [Decision("input", "pii", "redact", "email:1")])
    log(store, "r2", "plain", adapter="support")
    store.log_request("r3", **{**_refused(), "request": {"messages": []}})
    q = ReviewQueue(store)
    assert [it["request_id"] for it in q.items()] == ["r1", "r2"]  # a refused request has no answer to review
    assert [it["request_id"] for it in q.items(QueueFilter(flag="pii"))] == ["r1"]
    assert [it["request_id"] for it in q.items(QueueFilter(adapter="base"))] == ["r1"]
    assert [it["request_id"] for it in q.items(QueueFilter(adapter="support"))] == ["r2"]
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    assert q.items(QueueFilter(since=later)) == [] and len(q.items(QueueFilter(until=later))) == 2
    q.decide("r1", "edit", "ana", answer=nul, note=nul)
    got = q.item("r1")
    assert got is not None and got["prompt"][0]["content"] == nul and got["review"]["answer"] == nul
    assert got["review"]["note"] == nul
    with pytest.raises(ReviewError, match="only an edit"):
        q.decide("r2", "approve", "ana", answer="x")
    with pytest.raises(ReviewError, match="no answered request"):
        q.decide("r3", "approve", "ana")


def _refused() -> dict:
    return dict(api_key_id="k", endpoint="/v1/chat/completions", model="base", adapter=None, response_text=None,
                finish_reason=None, prompt_tokens=None, completion_tokens=None, latency_ms=1.0, status=400,
                decisions=[])  # fmt: skip


def test_queue_on_sqlite(tmp_path: Path) -> None:
    check_queue(Store(f"sqlite:///{tmp_path / 'x.db'}"))


def test_queue_on_postgresql_keeps_nul_text(pg_url: str) -> None:
    check_queue(Store(pg_url))
