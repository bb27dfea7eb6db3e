"""LLM-as-a-judge over any OpenAI-compatible endpoint: single-answer scores and position-swapped pairs.

Requests go through the official `openai` client (its timeout and retry-with-backoff). Every reply that
came back is cached in SQLite under the sha256 of the request (endpoint, model, messages, sampling), and
the verdict is parsed from the cached text each time, so a better parser needs no new requests. HTTP
errors and timeouts are not cached (they are retried next run) and count as "failed"; replies with no
readable score or winner count as "unparseable". Neither is ever dropped: they appear in the counts and
as NaN per-example scores, which the bootstrap leaves out and counts.

Pairwise judging asks twice, A/B then B/A. A winner counts only when both orders agree; when they
disagree the judge was following the position, not the answers, and the pair is a tie.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config import JudgeConfig
from tunelab.endpoint import Endpoint, api_key, chat
from tunelab.errors import ConfigError
from tunelab.scoring.extract import find_json
from tunelab.scoring.metrics import MetricResult

OK, FAILED, UNPARSEABLE = "ok", "failed", "unparseable"


@dataclass(frozen=True)
class Verdict:
    status: str  # ok | failed | unparseable
    value: Any = None  # a float score, or a winner "A" / "B" / "tie" as the judge saw the positions
    raw: str | None = None
    error: str | None = None
    cached: bool = False


@dataclass(frozen=True)
class PairVerdict:
    """Winner in terms of the caller's answers: "a", "b" or "tie"; None unless status is ok."""

    status: str
    winner: str | None
    first: Verdict  # answer_a shown as A
    second: Verdict  # answer_b shown as A
    consistent: bool = False


# --------------------------------------------------------------------------- cache


class VerdictCache:
    """request-hash -> reply text, in one SQLite file shared by threads (a lock serializes writes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, request TEXT, reply TEXT)")
        self._db.commit()

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM verdicts WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, request: dict[str, Any], reply: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?)", (key, json.dumps(request), reply))
            self._db.commit()

    def close(self) -> None:
        self._db.close()


def request_key(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# --------------------------------------------------------------------------- parsing


def parse_score(text: str, min_score: float, max_score: float) -> float | None:
    """A score from {"score": n}, MT-bench's [[n]], or the last "Score: n"; None if absent or out of range."""
    obj = find_json(text)
    value: Any = obj.get("score") if isinstance(obj, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        m = re.findall(r"\[\[(-?\d+(?:\.\d+)?)\]\]", text) or re.findall(
            r"score\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)", text, re.IGNORECASE
        )
        value = float(m[-1]) if m else None
    if value is None or not math.isfinite(value) or not min_score <= value <= max_score:
        return None
    return float(value)


_WINNERS = {"a": "A", "b": "B", "tie": "tie", "c": "tie", "draw": "tie"}


def parse_winner(text: str) -> str | None:
    """ "A", "B" or "tie" from {"winner": ...}, MT-bench's [[A]]/[[B]]/[[C]], or the last "Winner: X"."""
    obj = find_json(text)
    if isinstance(obj, dict) and isinstance(obj.get("winner"), str):
        return _WINNERS.get(obj["winner"].strip().lower())
    m = re.findall(r"\[\[(A|B|C)\]\]", text) or re.findall(r"winner\s*[:=]\s*\**\s*\"?(A|B|tie)\b", text, re.I)
    return _WINNERS.get(m[-1].lower()) if m else None


# --------------------------------------------------------------------------- the judge


class Judge:
    def __init__(self, cfg: JudgeConfig, cache: VerdictCache | None = None) -> None:
        self.cfg = cfg
        self.cache = cache or VerdictCache(cfg.cache_path or Path.home() / ".cache" / "tunelab" / "judge.sqlite")
        key = api_key(cfg.api_key_env, "eval.judge", required=True)
        self.client = Endpoint(cfg.base_url, key, cfg.timeout, cfg.max_retries).client()

    def _ask(self, prompt: str) -> tuple[str | None, str | None, bool]:
        """(reply, error, cached). Only replies are cached; errors are retried on the next run."""
        request: dict[str, Any] = {
            "base_url": self.cfg.base_url, "model": self.cfg.model, "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
            "messages": [{"role": "system", "content": self.cfg.system_prompt}, {"role": "user", "content": prompt}],
        }  # fmt: skip
        key = request_key(request)
        if (hit := self.cache.get(key)) is not None:
            return hit, None, True
        answer = chat(self.client, self.cfg.model, request["messages"], temperature=self.cfg.temperature,
                      max_tokens=self.cfg.max_tokens)  # fmt: skip
        if answer.error is not None:
            return None, answer.error, False
        reply = answer.text or ""
        self.cache.put(key, request, reply)
        return reply, None, False

    def score(self, question: str, answer: str, reference: str = "") -> Verdict:
        prompt = _fill(self.cfg.single_prompt, "eval.judge.single_prompt", question=question, answer=answer,
                       reference=reference or "(none)", rubric=self.cfg.rubric, min_score=_num(self.cfg.min_score),
                       max_score=_num(self.cfg.max_score))  # fmt: skip
        reply, error, cached = self._ask(prompt)
        if reply is None:
            return Verdict(FAILED, error=error)
        score = parse_score(reply, self.cfg.min_score, self.cfg.max_score)
        return Verdict(OK if score is not None else UNPARSEABLE, score, reply, cached=cached)

    def _pair_once(self, question: str, first: str, second: str) -> Verdict:
        prompt = _fill(self.cfg.pairwise_prompt, "eval.judge.pairwise_prompt", question=question, answer_a=first,
                       answer_b=second, rubric=self.cfg.rubric)  # fmt: skip
        reply, error, cached = self._ask(prompt)
        if reply is None:
            return Verdict(FAILED, error=error)
        winner = parse_winner(reply)
        return Verdict(OK if winner is not None else UNPARSEABLE, winner, reply, cached=cached)

    def compare(self, question: str, answer_a: str, answer_b: str) -> PairVerdict:
        first = self._pair_once(question, answer_a, answer_b)
        second = self._pair_once(question, answer_b, answer_a)
        for status in (FAILED, UNPARSEABLE):
            if status in (first.status, second.status):
                return PairVerdict(status, None, first, second)
        w1 = {"A": "a", "B": "b", "tie": "tie"}[first.value]
        w2 = {"A": "b", "B": "a", "tie": "tie"}[second.value]  # positions swapped back
        return PairVerdict(OK, w1 if w1 == w2 else "tie", first, second, consistent=w1 == w2)

    def score_all(
        self, questions: Sequence[str], answers: Sequence[str], references: Sequence[str] | None = None
    ) -> MetricResult:
        refs = references or [""] * len(questions)
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            verdicts = list(pool.map(self.score, questions, answers, refs))
        return single_result(verdicts)

    def compare_all(self, questions: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str]) -> MetricResult:
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            verdicts = list(pool.map(self.compare, questions, answers_a, answers_b))
        return pairwise_result(verdicts)


def single_result(verdicts: Sequence[Verdict]) -> MetricResult:
    per = [float(v.value) if v.status == OK else float("nan") for v in verdicts]
    ok = [s for s in per if not math.isnan(s)]
    counts = Counter(v.status for v in verdicts)
    details = {"ok": counts[OK], "failed": counts[FAILED], "unparseable": counts[UNPARSEABLE],
               "cached": sum(v.cached for v in verdicts), "errors": [v.error for v in verdicts if v.error][:20],
               "replies": [v.raw for v in verdicts]}  # fmt: skip
    return MetricResult(
        "judge", {"judge_score": sum(ok) / len(ok) if ok else float("nan")}, {"judge_score": per}, details
    )


def pairwise_result(verdicts: Sequence[PairVerdict]) -> MetricResult:
    """Per example: 1 when B wins, 0.5 tie, 0 when A wins (NaN when failed/unparseable)."""
    value = {"a": 0.0, "tie": 0.5, "b": 1.0}
    per = [value[v.winner] if v.status == OK and v.winner else float("nan") for v in verdicts]
    counts = Counter(v.status for v in verdicts)
    wins = Counter(v.winner for v in verdicts if v.status == OK)
    ok = [s for s in per if not math.isnan(s)]
    details = {"wins_a": wins["a"], "wins_b": wins["b"], "ties": wins["tie"],
               "inconsistent": sum(v.status == OK and not v.consistent for v in verdicts),
               "ok": counts[OK], "failed": counts[FAILED], "unparseable": counts[UNPARSEABLE]}  # fmt: skip
    return MetricResult(
        "judge_pairwise", {"win_rate_b": sum(ok) / len(ok) if ok else float("nan")}, {"win_rate_b": per}, details
    )


def _fill(template: str, name: str, **fields: Any) -> str:
    try:
        return template.format_map(fields)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"{name}: bad template field {e} (available: {', '.join('{' + k + '}' for k in fields)})"
        ) from None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
