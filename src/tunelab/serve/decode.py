"""Per-request sampling: parameters, their validation, one row's decoding state, and batched sampling.

Each row of the running batch keeps its own OpenAI sampling parameters, so concurrent requests with
different settings share every forward pass. The logits of a step are processed in this order:
`logit_bias` (added), presence/frequency penalties (OpenAI's formula over the tokens this row generated:
logit[t] -= count[t] * frequency_penalty + (count[t] > 0) * presence_penalty), the constraint mask
(tokens a grammar forbids get -inf). Logprobs are the log-softmax of those processed logits, before
temperature and top_p, so they describe the model (as constrained), not the sampling knobs. Then:
temperature 0 is greedy (argmax); otherwise softmax(logits / T), nucleus-filtered to top_p, drawn from the
row's own generator (a seed makes a request reproducible whatever else shares its batch, up to float
noise from padding; choice i of a request with `n` uses seed + i).

Isolation: `check_params` refuses what cannot be sampled before a row joins (the server answers 400),
and `sample_rows` checks every row's distribution and turns a failure into that row's error only, so one
bad row never fails the batch it shares.

Streaming (`emit`) holds back text that could still become a stop string or a tool call, and half-decoded
UTF-8 characters, so streamed chunks concatenate to exactly the non-streamed text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tunelab.serve.constrain import Constraint
from tunelab.serve.tools import TOOL_START, parse_tool_calls

MIN_TEMPERATURE = 1e-3  # 0 < T below this overflows logits / T in float32 (T=1e-45 gives inf and NaN)
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts


@dataclass(frozen=True)
class SamplingParams:
    """One request's decoding settings (OpenAI names). Every field has a default, so older call sites keep working."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1  # choices decoded from one prompt (one prefill, n rows)
    presence_penalty: float = 0.0  # -2..2
    frequency_penalty: float = 0.0  # -2..2
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias -100..100)
    logprobs: bool = False  # record each generated token's logprob
    top_logprobs: int = 0  # and this many alternatives per position (0..20)
    prompt_logprobs: bool = False  # logprobs of the prompt tokens too (completions `echo` + `logprobs`)
    constraint: Constraint | None = None  # grammar the output must follow (JSON mode, json_schema, tool call)
    tools: tuple[str, ...] = ()  # function names: non-empty turns on tool-call parsing of the output


@dataclass(frozen=True)
class TokenLogprob:
    token: str  # the token's text (U+FFFD where it is part of a multi-byte character; see `bytes`)
    token_id: int
    logprob: float | None  # None only for the first prompt token (echo): nothing precedes it
    bytes: tuple[int, ...]
    top: tuple[TokenLogprob, ...] = ()  # the most likely alternatives, best first (their `top` is empty)


@dataclass(frozen=True)
class Chunk:
    """Newly final output of one choice, pushed while decoding (streaming)."""

    index: int  # which choice (0..n-1)
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens generated since the previous chunk
    finish_reason: str | None = None  # set on the last chunk of a choice
    tool_calls: tuple[dict[str, Any], ...] = ()  # OpenAI-shaped, on the last chunk when the output held calls
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # on a choice's first chunk with params.prompt_logprobs (echo)


def check_params(p: SamplingParams, vocab_size: int, max_n: int) -> str | None:
    """Why `p` cannot be decoded (a message naming the field), or None when it can."""
    checks: list[tuple[bool, str]] = [
        (_finite(p.temperature) and p.temperature >= 0, f"temperature: {p.temperature} is not a number >= 0"),
        (
            p.temperature == 0 or p.temperature >= MIN_TEMPERATURE,
            f"temperature: {p.temperature} cannot be sampled (logits / temperature overflows); "
            f"use 0 for greedy decoding or at least {MIN_TEMPERATURE}",
        ),
        (_finite(p.top_p) and 0 < p.top_p <= 1, f"top_p: {p.top_p} must be in (0, 1]"),
        (isinstance(p.max_tokens, int) and p.max_tokens >= 1, f"max_tokens: {p.max_tokens} must be >= 1"),
        (1 <= p.n <= max_n, f"n: {p.n} must be between 1 and {max_n} (this server's batch size)"),
        (
            p.seed is None or SEED_MIN <= p.seed <= SEED_MAX,
            f"seed: {p.seed} is outside the 64-bit range [{SEED_MIN}, {SEED_MAX}]",
        ),
        (_finite(p.presence_penalty) and -2 <= p.presence_penalty <= 2, "presence_penalty: must be in [-2, 2]"),
        (_finite(p.frequency_penalty) and -2 <= p.frequency_penalty <= 2, "frequency_penalty: must be in [-2, 2]"),
        (0 <= p.top_logprobs <= MAX_TOP_LOGPROBS, f"top_logprobs: must be in [0, {MAX_TOP_LOGPROBS}]"),
    ]
    for ok, message in checks:
        if not ok:
            return message
    for i, s in enumerate(p.stop):
        if not _utf8(s):
            return f"stop[{i}]: not valid Unicode text (a lone surrogate?)"
    for tok, bias in p.logit_bias:
        if not (0 <= tok < vocab_size):
            return f"logit_bias: token id {tok} is outside the vocabulary (0..{vocab_size - 1})"
        if not (_finite(bias) and -100 <= bias <= 100):
            return f"logit_bias: bias {bias} for token {tok} must be in [-100, 100]"
    return None


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class Row:
    """One choice of one request inside the running batch. Callbacks run on the decoding thread."""

    prompt_ids: list[int]
    params: SamplingParams
    on_delta: Callable[[str], None] | None = None  # newly final text (simple streaming)
    is_cancelled: Callable[[], bool] = lambda: False
    index: int = 0  # choice index within its request
    on_chunk: Callable[[Chunk], None] | None = None  # newly final text + logprobs (+ finish); wins over on_delta
    adapter: str | None = None  # peft adapter name for this row ("__base__" = the base); None for a plain model
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None
    error: str | None = None  # why this row failed alone (sampling error); finish_reason is then "error"
    counts: dict[int, int] = field(default_factory=dict)  # generated token -> count (penalties)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    lp_sent: int = 0
    matcher: Any = None  # constrain.Matcher when params.constraint is set
    content: str | None = None  # the text without tool-call markup, once finished
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    gen: torch.Generator | None = None
    prompt_lp: tuple[TokenLogprob, ...] = ()  # the prompt's logprobs, sent with the first chunk, then cleared
    detok: Detok = field(default_factory=lambda: Detok())

    def __post_init__(self) -> None:
        if self.params.seed is not None and self.gen is None:
            self.gen = torch.Generator().manual_seed((self.params.seed + self.index) % 2**64)

    def generator(self) -> torch.Generator | None:
        return self.gen

    @property
    def wants_logprobs(self) -> bool:
        return self.params.logprobs or self.params.top_logprobs > 0


# ---------------------------------------------------------------------------------------------- sampling


TokenBytes = Callable[[int], bytes]


def sample_rows(rows: list[Row], logits: torch.Tensor, token_bytes: TokenBytes) -> list[tuple[int, Any] | str]:
    """For each row its (token, TokenLogprob | None), or an error message for that row alone."""
    try:
        return _sample(rows, logits, token_bytes)
    except Exception:  # find the row at fault: sample each alone, so only it fails
        out: list[tuple[int, Any] | str] = []
        for i, r in enumerate(rows):
            try:
                out += _sample([r], logits[i : i + 1], token_bytes)
            except Exception as e:
                out.append(f"{type(e).__name__}: {e}")
        return out


def _sample(rows: list[Row], logits: torch.Tensor, token_bytes: TokenBytes) -> list[tuple[int, Any] | str]:
    # Per-row Python only where a row needs it: most rows have no bias, penalty or constraint, and the
    # checks and the greedy choice are one tensor op for the whole batch (this runs every decode step).
    busy = [
        i
        for i, r in enumerate(rows)
        if r.matcher is not None or r.params.logit_bias or (r.counts and _penalized(r.params))
    ]
    x = logits.float().clone() if busy else logits.float()  # the caller's logits stay untouched
    errors: dict[int, str] = {}
    for i in busy:
        if msg := _process(rows[i], x[i]):
            errors[i] = msg
    dead = (~torch.isfinite(x).any(-1)).nonzero().flatten().tolist()
    for i in dead:
        errors.setdefault(i, "every token has -inf logit (logit_bias or constraint left nothing to sample)")
    lp = torch.log_softmax(x, dim=-1) if any(r.wants_logprobs for r in rows) else None
    tokens = x.argmax(-1).tolist()
    hot = [i for i, r in enumerate(rows) if r.params.temperature > 0 and i not in errors]
    if hot:
        temps = torch.tensor([rows[i].params.temperature for i in hot], dtype=torch.float32)
        probs = torch.softmax(x[hot] / temps[:, None], dim=-1)
        for j, i in enumerate(hot):
            p = probs[j]
            if rows[i].params.top_p < 1.0:
                p = _nucleus(p, rows[i].params.top_p)
            if not bool(torch.isfinite(p).all()) or float(p.sum()) <= 0:
                errors[i] = f"no token can be sampled (temperature {rows[i].params.temperature})"
                continue
            tokens[i] = int(torch.multinomial(p, 1, generator=rows[i].gen)[0])
    out: list[tuple[int, Any] | str] = []
    for i, r in enumerate(rows):
        if i in errors:
            out.append(errors[i])
        elif lp is not None and r.wants_logprobs:
            out.append((tokens[i], _logprob(lp[i], tokens[i], r.params.top_logprobs, token_bytes)))
        else:
            out.append((tokens[i], None))
    return out


def _penalized(p: SamplingParams) -> bool:
    return bool(p.presence_penalty or p.frequency_penalty)


def _process(r: Row, x: torch.Tensor) -> str | None:
    """Bias, penalties and the constraint mask, in place on this row's logits; an error message if none is left."""
    p = r.params
    if p.logit_bias:
        idx = torch.tensor([t for t, _ in p.logit_bias])
        x[idx] += torch.tensor([b for _, b in p.logit_bias], dtype=x.dtype)
    if r.counts and (p.presence_penalty or p.frequency_penalty):
        idx = torch.tensor(list(r.counts))
        c = torch.tensor(list(r.counts.values()), dtype=x.dtype)
        x[idx] -= c * p.frequency_penalty + p.presence_penalty
    if r.matcher is not None:
        allowed = r.matcher.allowed(x.shape[0])
        if allowed is None:
            return f"constraint: {r.matcher.error() or 'no token is allowed'}"
        x.masked_fill_(~allowed, float("-inf"))
    return None


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_p, order = probs.sort(descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p  # smallest set whose mass reaches top_p (>= 1 token)
    return torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])


def _logprob(lp: torch.Tensor, tok: int, k: int, token_bytes: TokenBytes) -> TokenLogprob:
    top: tuple[TokenLogprob, ...] = ()
    if k > 0:
        vals, idx = lp.topk(k)
        top = tuple(_entry(int(t), float(v), token_bytes) for v, t in zip(vals, idx))
    e = _entry(tok, float(lp[tok]), token_bytes)
    return TokenLogprob(e.token, e.token_id, e.logprob, e.bytes, top)


def _entry(tok: int, logprob: float, token_bytes: TokenBytes) -> TokenLogprob:
    b = token_bytes(tok)
    return TokenLogprob(b.decode("utf-8", errors="replace"), tok, logprob, tuple(b))


def prompt_logprobs(prompt_ids: list[int], logits: torch.Tensor, k: int, token_bytes: TokenBytes) -> list[TokenLogprob]:
    """Logprobs of each prompt token given the ones before it (`logits`: one row per prompt position); the
    first token's logprob is None (OpenAI's `echo` shows null for it), its text is there."""
    lp = torch.log_softmax(logits[:-1].float(), dim=-1)
    first = _entry(prompt_ids[0], 0.0, token_bytes)
    out: list[TokenLogprob] = [TokenLogprob(first.token, first.token_id, None, first.bytes)]
    for pos, tok in enumerate(prompt_ids[1:]):
        out.append(_logprob(lp[pos], tok, k, token_bytes))
    return out


# ---------------------------------------------------------------------------------------------- text state


def push(r: Row, token: int, lp: TokenLogprob | None, decode: Decode, eos_ids: set[int]) -> None:
    """Add one sampled token to the row: text, stop strings, constraint, limits; then stream what is final."""
    if token in eos_ids:
        r.finish_reason = "stop"
    else:
        r.ids.append(token)
        r.counts[token] = r.counts.get(token, 0) + 1
        if lp is not None:
            r.logprobs.append(lp)
        settled = r.detok.settled
        r.text = r.detok.add(r.ids, decode)
        # a stop string can only begin where the text could have changed, less the longest stop string
        since = max(0, settled - max((len(s) for s in r.params.stop), default=0))
        cut = min((i for i in (r.text.find(s, since) for s in r.params.stop if s) if i >= 0), default=-1)
        if r.matcher is not None and not r.matcher.consume(token):
            fail(r, f"constraint: {r.matcher.error() or f'token {token} is not allowed'}")
            return
        if cut >= 0:
            r.text, r.finish_reason = r.text[:cut], "stop"
        elif r.matcher is not None and r.matcher.stopped():
            r.finish_reason = "stop"  # the grammar is complete: nothing else may follow
        elif len(r.ids) >= r.params.max_tokens:
            r.finish_reason = "length"
    emit(r)


Decode = Callable[[list[int]], str]


def text_decoder(tokenizer: Any) -> Decode:
    """`tokenizer.decode(ids, skip_special_tokens=True)`; straight to the Rust tokenizer when that is the same thing
    (the Python wrapper walks the id list in Python on every call)."""
    backend = getattr(tokenizer, "_tokenizer", None)
    cleanup = getattr(tokenizer, "clean_up_tokenization_spaces", False)
    if backend is not None and hasattr(backend, "decode") and not cleanup:
        return lambda ids: str(backend.decode(ids, skip_special_tokens=True))
    return lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True))


@dataclass
class Detok:
    """Incremental detokenization: each token decodes a short window, not the whole output (that made every step
    O(length) per row). The window starts a few tokens back, so merges, leading-space rules and multi-byte
    characters resolve as in a full decode; it moves on once its text no longer ends in a partial character."""

    text: str = ""  # the settled text (cannot change any more)
    settled: int = 0  # len(text)
    start: int = 0  # window start: tokens before it only give context
    read: int = 0  # tokens up to here are in `text`
    context: str = ""  # decode(ids[start:read])

    def add(self, ids: list[int], decode: Decode) -> str:
        """The whole text so far (settled + the window's new part, which may end in a partial character)."""
        window = decode(ids[self.start :])
        new = window[len(self.context) :]
        if new and not new.endswith("\ufffd"):
            self.text += new
            self.settled = len(self.text)
            self.start, self.read = self.read, len(ids)
            self.context = decode(ids[self.start : self.read])
            return self.text
        return self.text + new


def cancel(r: Row) -> None:
    r.finish_reason = "cancelled"
    emit(r)


def fail(r: Row, message: str) -> None:
    r.error, r.finish_reason = message, "error"


def emit(r: Row) -> None:
    """Send the text that can no longer change; all of it once the row is finished."""
    if r.finish_reason is not None and r.content is None:
        _finish_text(r)
    final = r.content if r.content is not None else r.text
    end = len(final)
    if r.finish_reason is None:
        end -= _holdback(r.text, r.params.stop)
        if r.params.tools:
            start = r.text.find(TOOL_START)
            end = min(end, start if start >= 0 else len(r.text) - _holdback(r.text, (TOOL_START,)))
            end = min(end, len(r.text[:end].rstrip()))  # whitespace before a call is not part of the content
        while end > r.emitted and r.text[end - 1] == "\ufffd":  # an incomplete multi-byte character
            end -= 1
    new = final[r.emitted : end] if end > r.emitted else ""
    done = r.finish_reason is not None
    if r.on_chunk is not None and (new or done):
        lps, calls = tuple(r.logprobs[r.lp_sent :]), tuple(r.tool_calls) if done else ()
        r.on_chunk(Chunk(r.index, new, lps, r.finish_reason if done else None, calls, r.prompt_lp))
        r.lp_sent, r.prompt_lp = len(r.logprobs), ()
    elif new and r.on_delta is not None:
        r.on_delta(new)
    r.emitted = max(r.emitted, end)


def _finish_text(r: Row) -> None:
    r.content = r.text
    if r.params.tools and r.finish_reason in ("stop", "length"):
        content, calls = parse_tool_calls(r.text, r.params.tools)
        if calls:
            r.content, r.tool_calls, r.finish_reason = content, calls, "tool_calls"


def _holdback(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is the start of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def run_batch(model: Any, tokenizer: Any, rows: list[Row], eos_ids: set[int]) -> None:
    """Decode `rows` together to completion, none joining or leaving (offline use and tests); results stay in
    each row. The server uses the continuous batcher instead (core.py)."""
    from tunelab.serve.kvbatch import prefill

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    decode = text_decoder(tokenizer)

    def token_bytes(t: int) -> bytes:
        return str(tokenizer.decode([t])).encode("utf-8", errors="replace")

    with torch.inference_mode():
        lane, logits = prefill(model, [r.prompt_ids for r in rows], pad, {})
        while True:
            for i, (r, out) in enumerate(zip(rows, sample_rows(rows, logits, token_bytes), strict=True)):
                if r.finish_reason is not None:
                    continue
                if r.is_cancelled():
                    cancel(r)
                elif isinstance(out, str):
                    fail(r, out)
                else:
                    push(r, out[0], out[1], decode, eos_ids)
                    lane.last[i] = out[0]
            if all(r.finish_reason is not None for r in rows):
                return
            logits = lane.step(model, {})
