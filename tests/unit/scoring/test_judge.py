"""The judge end to end: the real `openai` client against a real chat-completions server on 127.0.0.1.

The server is a scripted judge: it scores an answer 9 when it contains "correct" and 2 otherwise; in a
pair it prefers the one answer that contains "correct", and otherwise always picks position A (a judge
with pure position bias). Answers containing MALFORMED get a reply with no verdict, SLOW ones a reply
after the client's timeout.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tunelab.config import JudgeConfig
from tunelab.errors import ConfigError
from tunelab.scoring.judge import Judge, VerdictCache, parse_score, parse_winner


def _judge_reply(prompt: str) -> str:
    if "MALFORMED" in prompt:
        return "Both answers have merit; I cannot decide."
    if "SLOW" in prompt:
        time.sleep(2.0)
    pair = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]\n(.*?)\n\nReply", prompt, re.S)
    if pair:
        a_ok, b_ok = ("correct" in pair.group(1)), ("correct" in pair.group(2))
        winner = "B" if (b_ok and not a_ok) else "A"
        return json.dumps({"winner": winner})
    single = re.search(r"\[Answer\]\n(.*?)\n\nReply", prompt, re.S)
    if single:
        if "PROSE" in single.group(1):
            return "The answer is partly right.\nScore: 6"
        return json.dumps({"score": 9 if "correct" in single.group(1) else 2})
    return "Score: 5"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})  # type: ignore[attr-defined]
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        content = _judge_reply(body["messages"][-1]["content"])
        payload = {
            "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }  # fmt: skip
        data = json.dumps(payload).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadingHTTPServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _judge(server: ThreadingHTTPServer, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> Judge:
    monkeypatch.setenv("JUDGE_KEY", "sk-test-123")
    cfg = JudgeConfig(base_url=f"http://127.0.0.1:{server.server_port}/v1", model="judge-model", api_key_env="JUDGE_KEY",
                      timeout=0.5, max_retries=0, cache_path=str(tmp_path / "judge.sqlite"), **kw)  # fmt: skip
    return Judge(cfg)


def test_single_scores_failures_and_cache(server, tmp_path, monkeypatch) -> None:
    judge = _judge(server, tmp_path, monkeypatch)
    questions = ["q1", "q2", "q3", "q4", "q5"]
    answers = ["a correct answer", "wrong", "PROSE answer", "MALFORMED", "SLOW reply"]
    r = judge.score_all(questions, answers, ["ref"] * 5)
    per = r.per_example["judge_score"]
    assert per[:3] == [9.0, 2.0, 6.0]
    assert math.isnan(per[3]) and math.isnan(per[4])
    assert r.details["ok"] == 3 and r.details["unparseable"] == 1 and r.details["failed"] == 1
    assert "Timeout" in r.details["errors"][0]
    assert r.scores["judge_score"] == pytest.approx((9 + 2 + 6) / 3)
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test-123"
    assert first["body"]["model"] == "judge-model" and first["body"]["messages"][0]["role"] == "system"
    assert "[Reference answer]\nref" in first["body"]["messages"][1]["content"]

    # Second run: the four replies come from the cache; the timed-out request is tried again.
    n_before = len(server.requests)
    again = _judge(server, tmp_path, monkeypatch).score_all(questions, answers, ["ref"] * 5)
    assert len(server.requests) == n_before + 1
    assert again.details["cached"] == 4
    assert again.per_example["judge_score"][:3] == per[:3]


def test_pairwise_runs_both_orders_and_cancels_position_bias(server, tmp_path, monkeypatch) -> None:
    judge = _judge(server, tmp_path, monkeypatch)
    v = judge.compare("q", "wrong", "the correct one")
    assert v.status == "ok" and v.winner == "b" and v.consistent
    assert (v.first.value, v.second.value) == ("B", "A")  # B in the first order, A once swapped
    prompts = [r["body"]["messages"][1]["content"] for r in server.requests[-2:]]
    assert "[Answer A]\nwrong" in prompts[0] and "[Answer A]\nthe correct one" in prompts[1]

    assert judge.compare("q", "the correct one", "wrong").winner == "a"
    biased = judge.compare("q", "meh", "also meh")  # the judge says "A" both times: position, not content
    assert biased.status == "ok" and biased.winner == "tie" and not biased.consistent

    r = judge.compare_all(["q"] * 4, ["wrong", "correct", "meh", "MALFORMED"], ["correct", "bad", "meh2", "x"])
    assert r.details["wins_b"] == 1 and r.details["wins_a"] == 1 and r.details["ties"] == 1
    assert r.details["inconsistent"] == 1 and r.details["unparseable"] == 1
    assert r.per_example["win_rate_b"][:3] == [1.0, 0.0, 0.5] and math.isnan(r.per_example["win_rate_b"][3])


def test_pairwise_timeout_is_failed(server, tmp_path, monkeypatch) -> None:
    v = _judge(server, tmp_path, monkeypatch).compare("q", "SLOW", "x")
    assert v.status == "failed" and v.winner is None and v.first.error


def test_custom_template_and_config_errors(server, tmp_path, monkeypatch) -> None:
    judge = _judge(server, tmp_path, monkeypatch, single_prompt="Grade {answer} for {question}.")
    assert judge.score("Q?", "ANS").value == 5.0
    assert server.requests[-1]["body"]["messages"][1]["content"] == "Grade ANS for Q?."
    with pytest.raises(ConfigError, match="single_prompt.*'nope'"):
        _judge(server, tmp_path, monkeypatch, single_prompt="{nope}").score("q", "a")
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(ConfigError, match="JUDGE_KEY is not set"):
        Judge(JudgeConfig(api_key_env="JUDGE_KEY", cache_path=str(tmp_path / "c.sqlite")))


def test_parsers() -> None:
    assert parse_score('{"score": 7}', 1, 10) == 7
    assert parse_score("Rating: [[8]]", 1, 10) == 8
    assert parse_score("Score: 3 at first... Final score: 4.5", 1, 10) == 4.5
    assert parse_score('{"score": 42}', 1, 10) is None
    assert parse_score("great answer", 1, 10) is None
    assert parse_winner('{"winner": "b"}') == "B"
    assert parse_winner("My verdict: [[C]]") == "tie"
    assert parse_winner("Winner: A") == "A"
    assert parse_winner("no idea") is None


def test_cache_is_real_sqlite(tmp_path) -> None:
    cache = VerdictCache(tmp_path / "c.sqlite")
    cache.put("k", {"x": 1}, "reply")
    cache.close()
    import sqlite3

    rows = sqlite3.connect(tmp_path / "c.sqlite").execute("SELECT key, request, reply FROM verdicts").fetchall()
    assert rows == [("k", '{"x": 1}', "reply")]
