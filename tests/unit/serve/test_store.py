"""The store: SQLite WAL and busy timeout, retries on a locked database, failures that hold no user text,
NUL-safe PostgreSQL text (a real server, started here), and columns added to an older database."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest
from servers import serving

from tunelab.serve.guard import Decision
from tunelab.serve.metrics import Metrics
from tunelab.serve.recorder import Recorder, RequestRow
from tunelab.serve.store import Store, StoreError, escape_nul, unescape_nul

SECRET = "SECRET-user-text-4242"


def row(rid: str, text: str = SECRET) -> dict:
    return dict(
        api_key_id="k",
        endpoint="/v1/chat/completions",
        model="base",
        adapter=None,
        request={"messages": [{"role": "user", "content": text}]},
        response_text=text,
        finish_reason="stop",
        prompt_tokens=1,
        completion_tokens=1,
        latency_ms=1.0,
        status=200,
        decisions=[Decision("input", "pii", "flag", "email:1")],
    )


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path / 'x.db'}", busy_timeout_ms=1234)
    with s.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234


def test_a_locked_database_is_retried_until_the_lock_goes(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    s = Store(f"sqlite:///{path}", retries=50, busy_timeout_ms=0)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    retried = threading.Event()
    s.on_retry = lambda table: retried.set()
    writer = threading.Thread(target=s.log_request, args=("r1",), kwargs=row("r1"))
    writer.start()
    assert retried.wait(30)
    locker.execute("ROLLBACK")
    writer.join(30)
    assert s.request("r1")["response_text"] == SECRET


def test_a_write_that_keeps_failing_is_counted_and_logs_no_user_text(tmp_path: Path, caplog) -> None:
    path = tmp_path / "x.db"
    s = Store(f"sqlite:///{path}", retries=2, busy_timeout_ms=0)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreError) as e:
        s.log_request("r2", **row("r2"))
    assert "requests row r2" in str(e.value) and "locked" in str(e.value) and SECRET not in str(e.value)
    metrics = Metrics()
    rec = Recorder(s, metrics, None)
    with caplog.at_level(logging.DEBUG):
        stored = rec.submit(RequestRow("r3", **row("r3"))).result(60)
    locker.execute("ROLLBACK")
    assert stored is False and metrics.store_failures.labels("requests")._value.get() == 1
    assert metrics.store_retries.labels("requests")._value.get() == 2
    assert "r3" in caplog.text and SECRET not in caplog.text


@pytest.mark.parametrize("text", ["", "plain", "\x00", "\ue000", "\ue0000", "a\ue000\x00b\x00\ue000\ue000c", "0\x000"])
def test_nul_escape_is_reversible(text: str) -> None:
    escaped = escape_nul(text)
    assert "\x00" not in escaped and unescape_nul(escaped) == text
    if "\x00" not in text and "\ue000" not in text:
        assert escaped == text  # ordinary text is stored as it is


def test_an_older_database_gets_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the table as the previous version made it (no choices_json)
        db.execute(
            "CREATE TABLE requests (id VARCHAR(64) PRIMARY KEY, created_at DATETIME NOT NULL, api_key_id VARCHAR(128),"
            " endpoint VARCHAR(64) NOT NULL, model VARCHAR(256) NOT NULL, adapter VARCHAR(256), request_json JSON NOT"
            " NULL, response_text TEXT, finish_reason VARCHAR(32), prompt_tokens INTEGER, completion_tokens INTEGER,"
            " latency_ms FLOAT, status INTEGER NOT NULL, guard_flags JSON NOT NULL)"
        )
    s = Store(f"sqlite:///{path}")
    s.log_request("r1", **row("r1"), choices=[{"index": 0, "text": "a"}, {"index": 1, "text": "b"}])
    assert s.request("r1")["choices_json"][1]["text"] == "b"


def test_postgresql_stores_nul_in_every_text_field(pg_url: str) -> None:
    s = Store(pg_url)
    nul = "a\x00b\ue000c"
    s.log_request("r-nul", **{**row("r-nul", nul), "decisions": [Decision("output", "blocklist", "flag", nul)]})
    got = s.request("r-nul")
    assert got["response_text"] == nul and got["request_json"]["messages"][0]["content"] == nul
    assert s.guard_events("r-nul")[0]["detail"] == nul
    s.add_feedback("r-nul", 1, nul, nul)
    assert [(f["corrected"], f["comment"]) for f in s.feedback("r-nul")] == [(nul, nul)]


def test_postgresql_server_answers_and_stores_nul_text(runs, tmp_path, pg_url: str) -> None:
    store = {"url": pg_url, "redact_pii": True}
    with serving(runs["full"], tmp_path, store=store, guard={"pii_output": "off"}) as api:
        raw = api.client.completions.with_raw_response.create(
            model="base", prompt="nul \x00 here", max_tokens=3, echo=True, temperature=0
        )
        rid = raw.headers["x-request-id"]
        answer = raw.parse().choices[0].text
        assert answer.startswith("nul \x00 here")  # echo puts the NUL into the generated answer's text
        body = {"request_id": rid, "rating": 1, "comment": "bad \x00 byte"}
        assert httpx.post(api.url + "/v1/feedback", json=body, headers=api.auth).status_code == 200
        got = api.state.store.request(rid)
        assert got["response_text"] == answer and api.state.store.feedback(rid)[0]["comment"] == "bad \x00 byte"
