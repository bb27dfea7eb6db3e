"""The terminal review of `tunelab feedback review`: one item at a time, one line of input per decision.

The first letter of a line is the key; the rest of the line is an optional note stored with the decision:
  a  approve the answer                 e  edit: type the better answer, end it with a line holding only "."
  c  take the user's corrected answer   r  reject the answer (bad, no better answer)
  s  skip (it stays in the queue)       q  quit (also the end of input, Ctrl-D)
  ?  this help
Reading lines rather than raw keys keeps it usable over any terminal, pipe or ssh session (and testable).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from tunelab.serve.review import QueueFilter, ReviewQueue

HELP = (
    "keys: a approve | e edit (end the answer with a line '.') | c take the user's correction | r reject | "
    "s skip | q quit | ? help; text after the key is kept as a note"
)
NAMES = {"a": "approve", "e": "edit", "c": "edit", "r": "reject", "s": "skip"}


def review_loop(queue: ReviewQueue, filt: QueueFilter, reviewer: str) -> dict[str, int]:
    """Review every item `filt` passes; returns the count of each decision made."""
    total = queue.stats(filt)["items"]
    done: dict[str, int] = {}
    typer.echo(f"{total} item(s) to review as {reviewer}. {HELP}")
    for n, item in enumerate(queue.scan(filt), 1):
        show(item, n, total)
        decision = ask(item)
        if decision is None:
            break
        kind, answer, note = decision
        queue.decide(item["request_id"], kind, reviewer, answer, note)
        done[kind] = done.get(kind, 0) + 1
    left = queue.stats(filt)["items"] if filt.unreviewed else None
    summary = ", ".join(f"{k} {v}" for k, v in done.items()) or "nothing decided"
    typer.echo(f"reviewed: {summary}" + (f"; {left} left in the queue" if left is not None else ""))
    return done


def show(item: dict[str, Any], n: int, total: int) -> None:
    flags = ", ".join(item["guard_flags"]) or "none"
    where = item["model"] + (f" (adapter {item['adapter']})" if item["adapter"] else "")
    typer.secho(
        f"\n--- {n}/{total}  {item['request_id']}  {item['created_at'][:19]}  {where}  flags: {flags}", bold=True
    )
    typer.echo("prompt:")
    prompt = item["prompt"]
    for m in prompt if isinstance(prompt, list) else [{"role": "prompt", "content": prompt}]:
        typer.echo(f"  {m.get('role')}: {_text(m.get('content'))}")
    typer.echo(f"answer:\n  {item['answer']}")
    for f in item["feedback"]:
        rating = {-1: "bad", 0: "neutral", 1: "good"}.get(f["rating"], f["rating"])
        typer.echo(f"user feedback: {rating}" + (f", comment: {f['comment']}" if f["comment"] else "")
                   + (f"\n  corrected: {f['corrected']}" if f["corrected"] else ""))  # fmt: skip
    if item["review"]:
        r = item["review"]
        typer.echo(f"earlier decision: {r['decision']} by {r['reviewer']} at {r['decided_at'][:19]}")


def _text(content: Any) -> str:
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def ask(item: dict[str, Any]) -> tuple[str, str | None, str | None] | None:
    """(decision, answer, note) from stdin, or None to stop."""
    while True:
        typer.echo("[a/e/c/r/s/q/?] > ", nl=False)
        line = sys.stdin.readline()
        if not line:  # end of input
            typer.echo("")
            return None
        key, note = line[:1].lower(), line[1:].strip() or None
        if key == "q":
            return None
        if key == "e":
            answer = read_answer()
            return None if answer is None else ("edit", answer, note)
        if key == "c":
            if not item["corrected"]:
                typer.echo("no corrected answer from the user on this item; use e to write one")
                continue
            return "edit", item["corrected"], note
        if key in NAMES:
            return NAMES[key], None, note
        typer.echo(HELP)


def read_answer() -> str | None:
    """Lines up to one holding only '.', joined; asked again while empty."""
    while True:
        typer.echo("better answer (end with a line holding only '.'):")
        lines = []
        for line in iter(sys.stdin.readline, ""):
            if line.rstrip("\n") == ".":
                break
            lines.append(line.rstrip("\n"))
        else:
            if not lines:
                return None  # the input ended
        text = "\n".join(lines).strip()
        if text:
            return text
        typer.echo("an edit needs an answer")
