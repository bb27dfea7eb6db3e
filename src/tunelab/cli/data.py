"""`tunelab data <verb>`: inspect, check, clean, split and augment data files (a Typer sub-app).

Thin verbs over the quality modules. `check` exits 1 when it finds errors (or warnings with --strict), so
it can gate CI; user mistakes raise `TunelabError`, which the main CLI prints without a traceback.
Each verb imports its machinery (tunelab.api, quality, models: torch and transformers) in its body, so that
`tunelab --help` and the light verbs start fast.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from tunelab.config import CheckOptions, DatasetConfig, ModelConfig, TeacherGeneration
from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from tunelab.quality.items import Dataset

data_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Inspect, check, clean, split and augment training data.",
)

Format = Annotated[str, typer.Option("--format", "-f", help="Record format (auto detects it).")]
Columns = Annotated[
    list[str] | None,
    typer.Option("--column", "-c", help="Map a format field to yours: instruction=question."),
]
LabelColumn = Annotated[str | None, typer.Option(help="Label column (default: label/category/intent/class).")]
Tokenizer = Annotated[str | None, typer.Option(help="Tokenizer for token lengths (preset, folder or hub id).")]
MaxLength = Annotated[int | None, typer.Option(help="List records longer than this many tokens (or characters).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _columns(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    bad = [c for c in items if "=" not in c]
    if bad:
        raise TunelabError(f"--column {bad[0]!r}: expected FORMAT_FIELD=YOUR_FIELD, e.g. output=answer")
    return dict(c.split("=", 1) for c in items)


FILE_OPTIONS = ("format", "reader", "encoding", "delimiter", "split", "max_samples")


def _inputs(paths: list[str] | None, fmt: str, columns: list[str] | None) -> list[Any]:
    """Datasets from `PATH` or `PATH::key=value,...` (a file's own format, reader, encoding, delimiter, ... and
    column mapping); --format and --column apply where a file names none."""
    mapping = _columns(columns)
    out: list[Any] = []
    for spec in paths or []:
        path, _, extra = spec.partition("::")
        own = _file_options(spec, extra)
        if not own and fmt == "auto" and not mapping:
            out.append(path)
            continue
        own.setdefault("format", fmt)
        own["columns"] = own.get("columns") or mapping
        try:
            out.append(DatasetConfig(path=path, **own))
        except ValueError as e:
            raise TunelabError(f"{spec}: {e}") from None
    return out


def _file_options(spec: str, extra: str) -> dict[str, Any]:
    """`format=labelled,text=sentence,label=sentiment` -> {format: labelled, columns: {text: sentence, ...}};
    commas inside a {template} do not split."""
    out: dict[str, Any] = {}
    for item in re.split(r",(?![^{]*})", extra) if extra else []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise TunelabError(f"{spec}: expected PATH::key=value,... (a dataset option such as encoding=latin-1, "
                               f"or a column mapping such as text=sentence), got {item!r}")  # fmt: skip
        key = key.strip()
        if key in FILE_OPTIONS:
            out[key] = "\t" if (key, value) == ("delimiter", "\\t") else value
        else:
            out.setdefault("columns", {})[key] = value
    return out


def _readable(ds: Dataset) -> Dataset:
    """A file with no record at all (empty, blank lines, a header only) or one that cannot be read is an error."""
    if ds.file_error and not ds.items:
        raise TunelabError(ds.file_error)
    return ds


def _tokenizer(name: str | None) -> Any:
    if not name:
        return None
    from tunelab.models.load import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path=name))


@data_app.command()
def inspect(
    paths: Annotated[list[str], typer.Argument(help="Data files (.jsonl/.json/.csv/.parquet) or folders.")],
    fmt: Format = "auto",
    column: Columns = None,
    label_column: LabelColumn = None,
    tokenizer: Tokenizer = None,
    max_length: MaxLength = None,
    plot: Annotated[Path | None, typer.Option(help="Save a length histogram PNG here.")] = None,
    as_json: AsJson = False,
) -> None:
    """Counts, roles and turns, lengths, empty fields, labels and over-long records.

    \b
    Examples:
      tunelab data inspect train.jsonl
      tunelab data inspect train.csv --tokenizer tiny --max-length 512 --plot lengths.png
    """
    from tunelab.quality.inspect import inspect_dataset, plot_lengths, public
    from tunelab.quality.items import load_dataset

    tok = _tokenizer(tokenizer)
    mapping = _columns(column)
    stats = [inspect_dataset(_readable(load_dataset(p, "train", fmt, mapping, label_column)), tok, max_length)
             for p in paths]  # fmt: skip
    if plot:
        plot_lengths(stats, plot, max_length)
    if as_json:
        typer.echo(json.dumps([public(s) for s in stats], indent=2, ensure_ascii=False))
        return
    for s in stats:
        typer.echo(_inspect_text(public(s)))
    if plot:
        typer.echo(f"histogram: {plot}")


def _inspect_text(s: dict[str, Any]) -> str:
    lines = [f"{s['path']}: {s['records']} records ({s['invalid']} invalid), format {s['format']}"]
    lines.append(f"  types: {s['record_types']}")
    if s["length"].get("count"):
        lines.append(f"  length ({s['length_unit']}): " + ", ".join(f"{k} {v}" for k, v in s["length"].items()))
    if "roles" in s:
        turns = s["turns"]
        lines.append(f"  roles: {s['roles']}; turns min {turns['min']} mean {turns['mean']} max {turns['max']}")
    if s["empty_fields"]:
        first = s["empty_fields"][0]
        lines.append(f"  empty fields: {len(s['empty_fields'])} (first: line {first['line']}, {first['field']})")
    if "labels" in s:
        lines.append(
            f"  labels ({s['label_column']}): {len(s['labels'])} distinct: "
            + ", ".join(f"{k} {v}" for k, v in list(s["labels"].items())[:10])
        )
    if "truncated" in s:
        lines.append(f"  longer than {s['max_length']}: {len(s['truncated'])}")
    return "\n".join(lines)


@data_app.command()
def check(
    train: Annotated[
        list[str],
        typer.Argument(
            help="Training data files (PATH or PATH::key=value,... with its own options), or a run config (.yaml): "
            "its data.train, data.eval and eval.data, each read with its own options, with its data.check settings."
        ),
    ],
    eval: Annotated[list[str] | None, typer.Option("--eval", help="Eval/validation file (repeatable).")] = None,
    test: Annotated[list[str] | None, typer.Option("--test", help="Test file (repeatable).")] = None,
    fmt: Format = "auto",
    column: Columns = None,
    label_column: LabelColumn = None,
    near_threshold: Annotated[float, typer.Option(help="Near-duplicate Jaccard threshold (0-1).")] = 0.85,
    near: Annotated[bool, typer.Option(help="Look for near-duplicates and near leakage.")] = True,
    pii: Annotated[bool, typer.Option(help="Scan for PII and secrets.")] = True,
    pii_ner: Annotated[bool, typer.Option(help="Also find names and places with Presidio (when installed).")] = False,
    tokenizer: Tokenizer = None,
    max_length: MaxLength = None,
    strict: Annotated[bool, typer.Option(help="Fail on warnings too.")] = False,
    as_json: AsJson = False,
    report: Annotated[Path | None, typer.Option(help="Also save the JSON report here.")] = None,
    card: Annotated[Path | None, typer.Option(help="Also write a data card (Markdown) here.")] = None,
    leakage: Annotated[str, typer.Option(help="Exact leakage: error, warn, or drop (reported as left out).")] = "error",
    workers: Annotated[int, typer.Option(min=1, help="Processes for the near-duplicate signatures.")] = 1,
    backend: Annotated[
        Literal["local", "ray"], typer.Option(help="local, or ray: the near-duplicate signatures on Ray Data.")
    ] = "local",
) -> None:
    """Find schema errors, duplicates, near-duplicates, leakage, PII and label problems. Exits 1 on errors.

    \b
    Examples:
      tunelab data check train.jsonl --eval val.jsonl --test test.jsonl
      tunelab data check train.csv --test test.csv --json > report.json
      tunelab data check train.jsonl --near-threshold 0.9 --strict --card data_card.md
      tunelab data check train.csv::text=sentence,label=sentiment --test test.tsv::text=utterance,label=intent
      tunelab data check run.yaml
    """
    from tunelab.quality.card import write_data_card
    from tunelab.quality.check import check as run_check

    if leakage not in ("error", "warn", "drop"):
        raise TunelabError(f"--leakage {leakage!r}: expected error, warn or drop")
    opts = CheckOptions(
        near_duplicates=near,
        near_threshold=near_threshold,
        pii=pii,
        pii_ner=pii_ner,
        tokenizer=tokenizer,
        max_length=max_length,
        label_column=label_column,
        strict=strict,
        leakage=leakage,  # type: ignore[arg-type]
        workers=workers,
        backend=backend,
    )
    if len(train) == 1 and Path(train[0]).suffix.lower() in (".yaml", ".yml"):  # a run config
        from tunelab.api import load_config

        cfg = load_config(train[0])
        trains, evals, tests = list(cfg.data.train), [*cfg.data.eval, *cfg.eval.data], _inputs(test, fmt, column)
        opts = cfg.data.check or opts
    else:
        trains, evals, tests = _inputs(train, fmt, column), _inputs(eval, fmt, column), _inputs(test, fmt, column)
    if not trains:
        raise TunelabError(f"data check: {train[0]} has no data.train datasets")
    result = run_check(trains, evals, tests, opts)
    typer.echo(result.to_json() if as_json else result.format_text())
    if report:
        report.write_text(result.to_json() + "\n", encoding="utf-8")
    if card:
        write_data_card(card, result)
    raise typer.Exit(result.exit_code)


@data_app.command()
def clean(
    path: Annotated[str, typer.Argument(help="The data file to clean (never modified).")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="Output file (default NAME.clean.EXT).")] = None,
    fmt: Format = "auto",
    column: Columns = None,
    label_column: LabelColumn = None,
    trim: Annotated[bool, typer.Option(help="Trim whitespace around text fields.")] = True,
    drop_empty: Annotated[bool, typer.Option(help="Drop records with an empty text field.")] = True,
    drop_invalid: Annotated[bool, typer.Option(help="Drop records that fail the format.")] = True,
    dedup: Annotated[bool, typer.Option(help="Drop exact duplicates (keep the first).")] = True,
    near: Annotated[bool, typer.Option(help="Drop near-duplicates (keep the first).")] = False,
    near_threshold: Annotated[float, typer.Option(help="Near-duplicate Jaccard threshold.")] = 0.85,
    pii: Annotated[str, typer.Option(help="PII: keep, redact or drop.")] = "keep",
    pii_ner: Annotated[bool, typer.Option(help="Also find names and places with Presidio (when installed).")] = False,
    leak_against: Annotated[
        list[str] | None,
        typer.Option(help="Drop records whose input is in this eval/test file (repeatable)."),
    ] = None,
) -> None:
    """Write a cleaned copy and a report of every change (NAME.clean.report.json).

    \b
    Examples:
      tunelab data clean train.jsonl
      tunelab data clean train.jsonl -o train.clean.jsonl --near --pii redact --leak-against test.jsonl
    """
    from tunelab.quality.clean import CleanOptions
    from tunelab.quality.clean import clean as run_clean

    if pii not in ("keep", "redact", "drop"):
        raise TunelabError(f"--pii {pii!r}: expected keep, redact or drop")
    opts = CleanOptions(
        trim=trim,
        drop_empty=drop_empty,
        drop_invalid=drop_invalid,
        dedup=dedup,
        near_dedup=near,
        near_threshold=near_threshold,
        pii=pii,  # type: ignore[arg-type]
        pii_ner=pii_ner,
        leak_against=leak_against or [],
    )
    res = run_clean(path, output, opts, fmt, _columns(column), label_column)
    counts = ", ".join(f"{k} {v}" for k, v in res.counts().items()) or "no changes"
    typer.echo(f"{res.output}: {res.records_out} of {res.records_in} records kept ({counts})")
    typer.echo(f"report: {res.report_path}")


@data_app.command()
def split(
    paths: Annotated[list[str], typer.Argument(help="Data files to split (together).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the splits and manifest.json.")],
    ratios: Annotated[str, typer.Option(help="train,validation,test shares.")] = "0.7,0.15,0.15",
    seed: Annotated[int, typer.Option(help="Seed for the assignment.")] = 0,
    group_by: Annotated[str | None, typer.Option(help="Field whose equal values stay in one split.")] = None,
    stratify: Annotated[bool, typer.Option(help="Keep label shares in every split.")] = True,
    near: Annotated[bool, typer.Option(help="Keep near-duplicate inputs in one split.")] = True,
    near_threshold: Annotated[float, typer.Option(help="Near-duplicate Jaccard threshold.")] = 0.85,
    fmt: Format = "auto",
    column: Columns = None,
    label_column: LabelColumn = None,
) -> None:
    """Deterministic train/validation/test splits, stratified and grouped so nothing leaks.

    \b
    Examples:
      tunelab data split all.jsonl --out splits/
      tunelab data split tickets.csv --out splits/ --group-by customer_id --ratios 0.8,0.1,0.1 --seed 1
    """
    from tunelab.quality.split import SplitOptions
    from tunelab.quality.split import split as run_split

    try:
        shares = tuple(float(x) for x in ratios.split(","))
    except ValueError:
        raise TunelabError(f"--ratios {ratios!r}: expected three numbers like 0.7,0.15,0.15") from None
    if len(shares) != 3:
        raise TunelabError(f"--ratios {ratios!r}: expected three numbers (train, validation, test)")
    try:
        opts = SplitOptions(
            ratios=shares,  # type: ignore[arg-type]
            seed=seed,
            group_by=group_by,
            stratify=stratify,
            label_column=label_column,
            near_threshold=near_threshold if near else None,
        )
    except ValueError as e:
        raise TunelabError(f"--ratios {ratios!r}: shares must be non-negative and sum to 1") from e
    manifest = run_split(paths, str(out), opts, fmt, _columns(column))
    for name, info in manifest["splits"].items():
        typer.echo(f"{name}: {info['records']} records -> {info['path']}")
    together = manifest["multi_record_groups"]
    typer.echo(f"manifest: {out / 'manifest.json'} ({together} multi-record groups kept together)")


@data_app.command()
def augment(
    path: Annotated[str, typer.Argument(help="The data file to augment (never modified).")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="Output (default NAME.augmented.EXT).")] = None,
    method: Annotated[
        list[str] | None,
        typer.Option(
            help="delete, swap, template; with a model: paraphrase, backtranslate, synthesize, self_instruct."
        ),
    ] = None,
    template: Annotated[list[str] | None, typer.Option(help="A template with {text} (repeatable).")] = None,
    per_record: Annotated[int, typer.Option(help="Variants per record and method.")] = 1,
    num_generate: Annotated[int, typer.Option(help="Records to generate (synthesize, self_instruct).")] = 10,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name at the endpoint.")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key (default $OPENAI_API_KEY).")] = None,
    pivot_language: Annotated[str, typer.Option(help="Pivot language for backtranslate.")] = "French",
    fmt: Format = "auto",
) -> None:
    """Add label-preserving variants; every new record has _synthetic (the method) and _source.

    \b
    Examples:
      tunelab data augment intents.csv --method delete --method swap --per-record 2
      tunelab data augment intents.csv --method template --template "Hi, {text} Thanks!"
      tunelab data augment train.jsonl --method paraphrase --base-url http://127.0.0.1:8000/v1 --model local
    """
    from tunelab.quality.augment import AugmentOptions, EndpointOptions
    from tunelab.quality.augment import augment as run_augment

    endpoint = None
    if base_url or model:
        if not (base_url and model):
            raise TunelabError("model-based augmentation needs both --base-url and --model")
        endpoint = EndpointOptions(base_url=base_url, model=model, api_key=api_key)
    opts = AugmentOptions(
        methods=method or ["delete", "swap"],
        templates=template or [],
        per_record=per_record,
        num_generate=num_generate,
        seed=seed,
        pivot_language=pivot_language,
        endpoint=endpoint,
    )
    res = run_augment(path, output, opts, fmt)
    for m, n in res.generated.items():
        typer.echo(f"{m}: {n} new records ({res.discarded.get(m, 0)} discarded as duplicates)")
    typer.echo(f"wrote {len(res.rows)} records to {res.output}")


@data_app.command()
def distill(
    path: Annotated[
        str,
        typer.Argument(
            help="Prompts: prompt rows, or conversation, prompt/completion, preference data (replies are replaced)."
        ),
    ],
    teacher: Annotated[
        str,
        typer.Option(
            help="A preset, model folder, hub id or run directory; with --base-url, the model name at the endpoint."
        ),
    ],
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="JSONL output (default NAME.distilled.jsonl).")
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint serving the teacher.")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Env var holding the endpoint's API key.")] = "OPENAI_API_KEY",
    max_new_tokens: Annotated[int, typer.Option(help="Longest teacher reply.")] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass when temperature > 0.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Local teacher: prompts per generation batch.")] = 16,
    concurrency: Annotated[int, typer.Option(help="Endpoint: requests in flight at once.")] = 8,
    timeout: Annotated[float, typer.Option(help="Endpoint: seconds per request.")] = 120.0,
    max_retries: Annotated[int, typer.Option(help="Endpoint: retries of a failed request.")] = 2,
    max_failed: Annotated[float, typer.Option(help="Exit with an error when more than this fraction failed.")] = 0.0,
    fmt: Format = "auto",
    column: Columns = None,
) -> None:
    """Have a teacher answer every prompt; write SFT records (messages or prompt/completion) for `method: sft`.

    Each record carries _teacher (model, endpoint, generation settings) and _source (file:line). Prompts that
    got no reply go to NAME.failed.jsonl and are counted; more than --max-failed of them is an error (exit 2).

    \b
    Examples:
      tunelab data distill prompts.jsonl --teacher runs/big-sft -o distilled.jsonl
      tunelab data distill prompts.jsonl --teacher gpt-4o-mini --base-url https://api.openai.com/v1 --concurrency 16
      tunelab data distill train.jsonl --teacher base --base-url http://127.0.0.1:8000/v1 --api-key-env TUNELAB_KEY
    """
    from pydantic import ValidationError

    from tunelab.methods.teacher_data import Teacher, check_failures, distill_dataset, summary
    from tunelab.quality.io import derived_path

    try:
        gen = TeacherGeneration(base_url=base_url, api_key_env=api_key_env, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size,
                                concurrency=concurrency, timeout=timeout, max_retries=max_retries, max_failed=max_failed)  # fmt: skip
    except ValidationError as e:
        raise TunelabError(
            "; ".join(f"--{str(x['loc'][0]).replace('_', '-')}: {x['msg']}" for x in e.errors())
        ) from None
    out = output or str(derived_path(path, "distilled", ".jsonl"))
    ds = DatasetConfig(path=path, format=fmt, columns=_columns(column))
    t = Teacher(teacher, gen)
    try:
        report = distill_dataset(ds, t, out)
    finally:
        t.close()
    typer.echo(summary(report))
    check_failures([report], max_failed, "pass --max-failed")
