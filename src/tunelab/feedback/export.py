"""`tunelab feedback export`: reviewed interactions in the serve store -> datasets in tunelab's own formats.

What becomes a row is feedback/rows.py (sft, preference and kto files, every row with its provenance). Then,
in this order, each step counted by reason in export.json and the data card (nothing is dropped silently):

1. PII is redacted in every prompt and answer (tunelab.quality.pii): the store may hold text unredacted
   (store.redact_pii off) and a reviewer's edit is never redacted on its way in.
2. Duplicates inside the export are dropped (the same prompt and answer, and label for kto; first kept).
3. With `against` (the run the feedback is for), rows whose prompt is already in that run's training data are
   dropped (`in_training`: it trained on that prompt; an answer that differs there is a conflict to fix in
   the training data), and rows whose prompt is in an eval set of the run (`leak_exact`) or near one
   (`leak_near`: character 5-gram Jaccard at least `near_threshold`, tunelab.quality.dedup) are dropped, so
   the run's evaluation stays a measurement.

Written to OUT: sft.jsonl, preference.jsonl, kto.jsonl (the kinds asked for that have rows), export.json (the
manifest: store, filters, counts, what was dropped and why, sha256 of every file) and data_card.md (the data
toolkit's card of the files, checked against the run's eval sets, plus provenance and cleaning sections).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunelab import api
from tunelab.config import CheckOptions, DatasetConfig
from tunelab.data.formats import FORMATS
from tunelab.errors import DataError, TunelabError
from tunelab.feedback.rows import KINDS, Skipped, Verdict, build_rows, verdicts
from tunelab.quality.card import data_card
from tunelab.quality.check import check, load
from tunelab.quality.dedup import near_pairs
from tunelab.quality.io import sha256_file, write_rows
from tunelab.quality.items import record_texts, text_hash
from tunelab.quality.pii import redact_pii
from tunelab.serve.review import QueueFilter, ReviewQueue
from tunelab.serve.store import Store

MANIFEST = "export.json"
FORMAT_OF = {"sft": "prompt_completion", "preference": "preference", "kto": "kto"}


@dataclass(frozen=True)
class ExportOptions:
    filt: QueueFilter = field(default_factory=QueueFilter)
    against: str | None = None  # the run whose training data and eval sets the export is checked against
    kinds: tuple[str, ...] = KINDS
    ratings: bool = True  # users' +1/-1 ratings of unreviewed answers count (kto, preference)
    near_threshold: float = 0.85
    overwrite: bool = False


@dataclass
class References:
    """Input hashes of a run's training data and eval sets, and the eval inputs for near matching."""

    train: set[str] = field(default_factory=set)
    eval: set[str] = field(default_factory=set)
    eval_texts: list[str] = field(default_factory=list)
    eval_files: list[DatasetConfig] = field(default_factory=list)


def export(store_url: str, out: str | Path, options: ExportOptions | None = None) -> dict[str, Any]:
    """Write the export to `out`; returns its manifest (also OUT/export.json)."""
    options = options or ExportOptions()
    out = Path(out)
    if unknown := sorted(set(options.kinds) - set(KINDS)):
        raise TunelabError(f"--kinds: unknown kind(s) {', '.join(unknown)}; expected some of {', '.join(KINDS)}")
    if (out / MANIFEST).is_file() and not options.overwrite:
        raise TunelabError(f"{out / MANIFEST} exists: choose another folder or pass --overwrite")
    store = Store(store_url)
    try:
        judged, skipped, n_items = _judge(ReviewQueue(store), options)
    finally:
        store.close()
    redactions: Counter[str] = Counter()
    rows = build_rows([_redacted(v, redactions) for v in judged])
    refs = references(options.against)
    kept, dropped = {}, {}
    for kind in options.kinds:
        kept[kind], dropped[kind] = clean(rows[kind], kind, refs, options.near_threshold)
    out.mkdir(parents=True, exist_ok=True)
    files = {kind: _write(out, kind, r) for kind, r in kept.items() if r}
    if not files:
        raise TunelabError(f"nothing to export: {n_items} item(s) matched, none gave a row "
                           f"({_reasons(skipped.counts, dropped)}); review some first (tunelab feedback review)")  # fmt: skip
    manifest = _manifest(store, options, n_items, files, skipped, dropped, redactions, judged)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    (out / "data_card.md").write_text(_card(out, files, refs, manifest), encoding="utf-8")
    return manifest


def _judge(q: ReviewQueue, options: ExportOptions) -> tuple[list[Verdict], Skipped, int]:
    skipped, judged, n = Skipped(), [], 0
    for item in q.scan(options.filt):
        n += 1
        judged += verdicts(item, options.ratings, skipped)
    return judged, skipped, n


def _redacted(v: Verdict, found: Counter[str]) -> Verdict:
    def clean(text: str) -> str:
        new, findings = redact_pii(text)
        found.update(f.kind for f in findings)
        return new

    prompt = (clean(v.prompt) if isinstance(v.prompt, str)
              else [m | {"content": clean(m["content"]) if isinstance(m["content"], str) else m["content"]}
                    for m in v.prompt])  # fmt: skip
    return Verdict(prompt, clean(v.answer), v.good, v.provenance)


# --------------------------------------------------------------------------- cleaning


def references(run: str | None) -> References:
    """What the export is checked against: the run's training inputs and eval inputs."""
    if run is None:
        return References()
    config = Path(run) / "config.yaml"
    if not config.is_file():
        raise TunelabError(f"--against {run}: not a run directory (no config.yaml)")
    cfg = api.load_config(config)
    refs = References(eval_files=[*cfg.data.eval, *cfg.eval.data])
    opts = CheckOptions(pii=False, near_duplicates=False)
    for ds in cfg.data.train:
        refs.train |= {text_hash(it.input_text) for it in load(ds, "train", opts).valid if it.input_text.strip()}
    for ds in refs.eval_files:
        for it in load(ds, "eval", opts).valid:
            if it.input_text.strip() and text_hash(it.input_text) not in refs.eval:
                refs.eval.add(text_hash(it.input_text))
                refs.eval_texts.append(it.input_text)
    return refs


def clean(rows: list[dict[str, Any]], kind: str, refs: References,
          near_threshold: float) -> tuple[list[dict[str, Any]], dict[str, int]]:  # fmt: skip
    """The rows kept and the count dropped per reason (duplicate, in_training, leak_exact, leak_near, invalid)."""
    dropped: Counter[str] = Counter()
    kept, inputs, seen = [], [], set()
    for i, row in enumerate(rows):
        try:
            inp, outp = record_texts(FORMATS[FORMAT_OF[kind]](row))
        except (DataError, ValueError) as e:  # a row the trainer would refuse (an empty answer, ...)
            raise TunelabError(f"export {kind} row {i} (request {_rid(row)}) is not valid {kind} data: {e}") from None
        key = text_hash(f"{inp}\x00{outp}\x00{row.get('label', '')}")
        reason = ("duplicate" if key in seen else "in_training" if text_hash(inp) in refs.train
                  else "leak_exact" if text_hash(inp) in refs.eval else None)  # fmt: skip
        seen.add(key)
        if reason:
            dropped[reason] += 1
            continue
        kept.append(row)
        inputs.append(inp)
    near = _near_eval(inputs, refs.eval_texts, near_threshold)
    dropped["leak_near"] = len(near)
    return [r for i, r in enumerate(kept) if i not in near], dict(dropped)


def _near_eval(inputs: list[str], eval_texts: list[str], threshold: float) -> set[int]:
    """Indices of `inputs` near an eval input (at least `threshold`)."""
    if not inputs or not eval_texts:
        return set()
    n = len(eval_texts)
    pairs = near_pairs([*eval_texts, *inputs], threshold)
    return {j - n for i, j, _ in pairs if i < n <= j}


def _rid(row: dict[str, Any]) -> str:
    prov = row.get("provenance", {})
    return str(prov.get("request_id") or prov.get("chosen", {}).get("request_id"))


# --------------------------------------------------------------------------- writing


def _write(out: Path, kind: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    path = write_rows(rows, out / f"{kind}.jsonl")
    return {"path": path.name, "format": FORMAT_OF[kind], "rows": len(rows), "sha256": sha256_file(path)}


def _manifest(store: Store, options: ExportOptions, n_items: int, files: dict[str, Any], skipped: Skipped,
              dropped: dict[str, dict[str, int]], redactions: Counter[str], judged: list[Verdict]) -> dict[str, Any]:  # fmt: skip
    filt = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(options.filt).items()}
    reviewers = sorted({v.provenance["reviewer"] for v in judged if v.provenance.get("reviewer")})
    return {
        "created_at": datetime.now(timezone.utc).isoformat(),
        "store": store.engine.url.render_as_string(hide_password=True),
        "filters": {k: v for k, v in filt.items() if v not in (None, False)},
        "against": str(Path(options.against).resolve()) if options.against else None,
        "ratings": options.ratings,
        "near_threshold": options.near_threshold,
        "items": n_items,
        "requests": len({v.provenance["request_id"] for v in judged}),
        "reviewers": reviewers,
        "not_exported": skipped.counts,
        "files": files,
        "dropped": dropped,
        "redacted": dict(redactions),
    }


def _reasons(skipped: dict[str, int], dropped: dict[str, dict[str, int]]) -> str:
    merged: Counter[str] = Counter(skipped)
    for d in dropped.values():
        merged.update({k: v for k, v in d.items() if v})
    return ", ".join(f"{k} {v}" for k, v in sorted(merged.items())) or "no items"


def _card(out: Path, files: dict[str, Any], refs: References, manifest: dict[str, Any]) -> str:
    report = check([str(out / f["path"]) for f in files.values()], refs.eval_files, options=CheckOptions())
    md = data_card(report, title="Data card: feedback export")
    prov = [f"- store: `{manifest['store']}`; filters: {manifest['filters'] or 'none'}",
            f"- {manifest['items']} item(s) read, {manifest['requests']} request(s) exported; "
            f"reviewers: {', '.join(manifest['reviewers']) or 'none'}; user ratings counted: {manifest['ratings']}",
            f"- checked against: `{manifest['against'] or 'no run (no training/eval check)'}`",
            f"- not exported: {manifest['not_exported'] or 'none'}",
            f"- PII redacted: {manifest['redacted'] or 'none found'}"]  # fmt: skip
    rows = [f"| {kind} | {files[kind]['rows'] if kind in files else 0} | "
            + ", ".join(f"{k} {v}" for k, v in manifest["dropped"].get(kind, {}).items() if v) + " |"
            for kind in manifest["dropped"]]  # fmt: skip
    table = ["| kind | rows | dropped |", "|---|---|---|", *rows]
    return md + "\n## Provenance\n\n" + "\n".join(prov) + "\n\n## Export cleaning\n\n" + "\n".join(table) + "\n"
