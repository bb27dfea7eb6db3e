"""The decoding state the batcher drives: requests -> rows in one running `Lane`, prefill on join, one step at a time.

Runs only on the engine thread. Isolation: a request whose constraint or prefill fails is answered with
its error alone (a failed batched prefill is retried one request at a time to find the culprit); a row
whose sampling fails ends alone (decode.sample_rows); a forward pass that fails for the whole batch fails
the rows in it, and the engine keeps serving. Results are handed back through each job's `done` callback.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tunelab.errors import TunelabError
from tunelab.serve.batcher import Request
from tunelab.serve.decode import (
    Row,
    SamplingParams,
    TokenLogprob,
    cancel,
    emit,
    fail,
    prompt_logprobs,
    push,
    sample_rows,
    text_decoder,
)
from tunelab.serve.kvbatch import Lane, prefill, repeat_rows

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch


class SamplingError(TunelabError):
    """A request could not be decoded (its parameters, constraint or prompt); other requests are unaffected."""


@dataclass(frozen=True)
class Choice:
    index: int
    text: str  # the content: tool-call markup removed when calls were parsed
    finish_reason: str  # stop | length | cancelled | tool_calls
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None = None  # when params.logprobs / top_logprobs
    tool_calls: tuple[dict[str, Any], ...] = ()  # OpenAI-shaped: {id, type: function, function: {name, arguments}}


@dataclass(frozen=True)
class GenResult:
    """What generate() returns. `text`/`finish_reason` are choice 0's; `completion_tokens` counts every choice."""

    text: str
    finish_reason: str  # "stop" | "length" | "cancelled" | "tool_calls"
    prompt_tokens: int
    completion_tokens: int
    choices: tuple[Choice, ...] = ()
    prompt_logprobs: tuple[TokenLogprob, ...] | None = None  # params.prompt_logprobs (echo); first's logprob None


@dataclass(eq=False)
class Job:
    """The engine's part of a Request."""

    adapter: str | None  # peft adapter name, BASE_ADAPTER, or None for a plain (non-peft) model
    model: str
    prompt_ids: list[int]
    params: SamplingParams
    done: Callable[[GenResult | BaseException], None]
    make_row: Callable[[int], Row]  # choice index -> its Row (callbacks attached)
    rows: list[Row] = field(default_factory=list)
    prompt_lp: list[TokenLogprob] | None = None
    answered: bool = False


class DecodeCore:
    def __init__(self, engine: Any) -> None:
        self.engine = engine  # model, tokenizer, eos_ids, pad_id, grammars, is_peft, observe()
        self.lane = Lane()
        self.rows: list[Row] = []
        self.reqs: list[Request] = []  # the request of each row, aligned with self.rows
        self._bytes: dict[int, bytes] = {}
        self.decode = text_decoder(engine.tokenizer)
        self.prefills = 0  # prefill forward passes (joins), for benchmarks beside engine.batch_sizes

    # ------------------------------------------------------------------ Core protocol

    def busy(self) -> bool:
        return bool(self.rows)

    def active(self) -> Counter:
        return Counter(r.tenant for r in self.reqs)

    def uses(self, model: str) -> bool:
        return any(r.payload.model == model for r in self.reqs)

    def drop(self, requests: list[Request]) -> None:
        for req in requests:
            job: Job = req.payload
            self._answer(job, GenResult("", "cancelled", len(job.prompt_ids), 0))

    def fail_all(self, message: str) -> None:
        for row in self.rows:
            if row.finish_reason is None:
                fail(row, message)
        self._sweep()
        self.lane = Lane()

    @torch.inference_mode()
    def join(self, requests: list[Request]) -> None:
        ready = [r for r in requests if self._make_rows(r.payload)]
        if not ready:
            return
        try:
            self._prefill(ready)
        except Exception:  # find the request at fault: prefill one at a time so only it fails
            for req in ready:
                try:
                    self._prefill([req])
                except Exception as e:
                    self._answer(req.payload, SamplingError(f"prefill failed: {type(e).__name__}: {e}"))
        self._sweep()

    @torch.inference_mode()
    def step(self) -> Counter:
        for row, req in zip(self.rows, self.reqs):
            if row.finish_reason is None and (req.cancelled or row.is_cancelled()):
                cancel(row)
        self._sweep()
        if not self.rows:
            return Counter()
        self.engine.observe(len(self.rows))
        try:
            logits = self.lane.step(self.engine.model, self._extra(self.rows))
        except Exception as e:
            self.fail_all(f"decode step failed: {type(e).__name__}: {e}")
            return Counter()
        self._advance(self.rows, logits, list(range(len(self.rows))))
        used = Counter(req.tenant for req in self.reqs)
        self._sweep()
        return used

    # ------------------------------------------------------------------ internals

    def _make_rows(self, job: Job) -> bool:
        try:
            job.rows = [job.make_row(i) for i in range(job.params.n)]
            if job.params.constraint is not None:
                for row in job.rows:
                    row.matcher = self.engine.grammars.matcher(job.params.constraint)
        except Exception as e:
            self._answer(job, e if isinstance(e, TunelabError) else SamplingError(f"{type(e).__name__}: {e}"))
            return False
        return True

    def _prefill(self, requests: list[Request]) -> None:
        jobs: list[Job] = [r.payload for r in requests]
        self.prefills += 1
        want_all = any(j.params.prompt_logprobs for j in jobs)
        extra = self._extra([j.rows[0] for j in jobs])
        lane, logits = prefill(
            self.engine.model, [j.prompt_ids for j in jobs], self.engine.pad_id, extra, all_logits=want_all
        )
        width = lane.width
        for i, j in enumerate(jobs):
            if j.params.prompt_logprobs:
                k = j.params.top_logprobs
                j.prompt_lp = prompt_logprobs(j.prompt_ids, logits[i, width - len(j.prompt_ids) :], k, self.token_bytes)
                for row in j.rows:
                    row.prompt_lp = tuple(j.prompt_lp)
        last = logits[:, -1] if want_all else logits
        counts = [j.params.n for j in jobs]
        lane = repeat_rows(lane, counts)
        rows = [row for j in jobs for row in j.rows]
        owners = [req for req, j in zip(requests, jobs) for _ in j.rows]
        first = last[torch.tensor([i for i, c in enumerate(counts) for _ in range(c)], dtype=torch.long)]
        self._advance(rows, first, list(range(len(self.rows), len(self.rows) + len(rows))), lane)
        self.lane.add(lane)
        self.rows += rows
        self.reqs += owners

    def _advance(self, rows: list[Row], logits: torch.Tensor, at: list[int], lane: Lane | None = None) -> None:
        """Sample one token for each row and push it; `lane.last` gets the tokens (rows at index `at`)."""
        target = lane if lane is not None else self.lane
        outcomes = sample_rows(rows, logits, self.token_bytes)
        last = target.last.tolist()
        for k, (row, out) in enumerate(zip(rows, outcomes, strict=True)):
            if isinstance(out, str):
                fail(row, out)
                emit(row)
                continue
            token, lp = out
            push(row, token, lp, self.decode, self.engine.eos_ids)
            last[k if lane is not None else at[k]] = token
        target.last = torch.tensor(last, dtype=torch.long)

    def _extra(self, rows: list[Row]) -> dict[str, Any]:
        return {"adapter_names": [r.adapter or BASE_ADAPTER for r in rows]} if self.engine.is_peft() else {}

    def _sweep(self) -> None:
        """Rows that finished leave the batch; requests whose rows all finished are answered."""
        for row, req in zip(self.rows, self.reqs):
            job: Job = req.payload
            if row.error is not None:  # one choice failed: the request fails (alone), its other choices stop
                for other in job.rows:
                    if other.finish_reason is None:
                        other.finish_reason = "error"
        keep = [i for i, row in enumerate(self.rows) if row.finish_reason is None]
        kept = set(keep)
        done = {id(req): req for i, req in enumerate(self.reqs) if i not in kept}
        if len(keep) != len(self.rows):
            self.lane.keep(keep)
            self.rows = [self.rows[i] for i in keep]
            self.reqs = [self.reqs[i] for i in keep]
        for req in done.values():
            job = req.payload
            if all(r.finish_reason is not None for r in job.rows):
                self._answer(job, self._result(job))

    def _result(self, job: Job) -> GenResult | BaseException:
        errors = [r.error for r in job.rows if r.error]
        if errors:
            return SamplingError(f"could not decode this request: {errors[0]}")
        choices = tuple(
            Choice(
                r.index,
                r.content if r.content is not None else r.text,
                r.finish_reason or "length",
                tuple(r.ids),
                tuple(r.logprobs) if r.wants_logprobs else None,
                tuple(r.tool_calls),
            )
            for r in job.rows
        )
        c0 = choices[0]
        lp = tuple(job.prompt_lp) if job.prompt_lp is not None else None
        n_tokens = sum(len(c.token_ids) for c in choices)
        return GenResult(c0.text, c0.finish_reason, len(job.prompt_ids), n_tokens, choices, lp)

    def _answer(self, job: Job, result: GenResult | BaseException) -> None:
        if not job.answered:
            job.answered = True
            job.done(result)

    def token_bytes(self, token: int) -> bytes:
        b = self._bytes.get(token)
        if b is None:
            b = self.engine.token_bytes(token)
            self._bytes[token] = b
        return b
