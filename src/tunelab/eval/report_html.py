"""The HTML side of run reports: one file, inline CSS, plots as data: URIs, every data string escaped."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from tunelab.eval.perplexity import perplexity_text
from tunelab.eval.report import (
    LOSS_NOTE,
    ReportData,
    _f,
    _prompt_text,
    agg_label,
    demote,
    field_tables,
    flip_title,
    flips_shown,
    flips_summary,
    forgetting_status,
    has_loss,
    plot_forgetting,
    plot_losses,
    plot_metric_bars,
    row_label,
    shown,
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f4f6}
.better{color:#1e8449;font-weight:600}.worse,.regressed{color:#c0392b;font-weight:700}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;white-space:pre-wrap}
.flip{border-left:4px solid #2f6fde;padding-left:.8em;margin:1em 0}.flip.regressed{border-color:#c0392b}
.na{color:#666;font-weight:600}.card{border-top:1px solid #ddd;margin-top:2em}
img{max-width:100%}
"""


def _img(b64: str | None, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{b64}">' if b64 else ""


def _metrics_table(d: ReportData) -> str:
    models = list(d.results)
    keys = sorted({k for r in d.results.values() for k in r})
    head = "<tr><th>metric</th>" + "".join(f"<th>{escape(m)}</th>" for m in models) + "</tr>"
    body = "".join(
        f"<tr><td>{escape(agg_label(k))}</td>"
        + "".join(f"<td>{_f(d.results[m].get(k))}</td>" for m in models)
        + "</tr>"
        for k in keys
    )
    note = f"<p>{escape(LOSS_NOTE)}</p>" if has_loss(d) else ""
    return f"<h2>Metrics</h2><table>{head}{body}</table>{note}" + "".join(_field_table(*t) for t in field_tables(d))


def _field_table(metric: str, models: list[str], rows: list[tuple[str, list[float | None]]]) -> str:
    head = "<tr><th>field</th>" + "".join(f"<th>{escape(m)}</th>" for m in models) + "</tr>"
    body = "".join(
        f"<tr><td>{escape(f)}</td>" + "".join(f"<td>{_f(v)}</td>" for v in values) + "</tr>" for f, values in rows
    )
    return f"<h2>Per-field accuracy ({escape(metric)})</h2><table>{head}{body}</table>"


def _output(text: Any) -> str:
    if text is None or not str(text).strip():  # show blank outputs, they are a finding in themselves
        return f"<em>(blank output: {escape(repr(text)[:40])})</em>"
    return f"<code>{escape(shown(text))}</code>"


def _comparison(c: dict[str, Any]) -> str:
    a, b = escape(c["name_a"]), escape(c["name_b"])
    rows = []
    for r in c["rows"]:
        cls = {"better": "better", "worse": "worse"}.get(r["verdict"], "")
        rows.append(
            f"<tr><td>{escape(row_label(r))}</td><td>{_f(r['value_a'])}</td><td>{_f(r['value_b'])}</td>"
            f"<td>{_f(r['diff'])}</td><td>[{_f(r['ci_low'])}, {_f(r['ci_high'])}]</td>"
            f"<td class='{cls}'>{escape(r['verdict'])}</td><td>{len(r['improved'])}</td><td>{len(r['regressed'])}</td></tr>"
        )
    head = (f"<tr><th>score</th><th>{a}</th><th>{b}</th><th>diff (B-A)</th><th>95% CI</th><th>verdict</th>"
            "<th>improved</th><th>regressed</th></tr>")  # fmt: skip
    parts = [f"<h2>Comparison: {a} vs {b}</h2>",
             "<p>Means of per-example scores; paired bootstrap 95% confidence interval of the difference.</p>",
             f"<table>{head}{''.join(rows)}</table>", _img(plot_metric_bars(c), "metric bars")]  # fmt: skip
    return "".join(parts)


def _flipped(c: dict[str, Any]) -> str:
    a, b = escape(c["name_a"]), escape(c["name_b"])
    if not c["flipped"]:
        return ""
    parts = ["<h2>Flipped examples</h2>", f"<p>{escape(flips_summary(c))}</p>"]
    for f in flips_shown(c):
        parts.append(
            f"<div class='flip {escape(f['direction'])}'><h3>{escape(flip_title(f))} <small>{escape(str(f['source']))}</small></h3>"
            f"<pre>{escape(_prompt_text(f['prompt']))}</pre><p>Reference: <code>{escape(shown(f['reference']))}</code></p>"
            f"<p>{a} ({_f(f['score_a'])}): {_output(f['output_a'])}</p>"
            f"<p>{b} ({_f(f['score_b'])}): {_output(f['output_b'])}</p></div>"
        )
    return "".join(parts)


def _forgetting(fg: dict[str, Any]) -> str:
    verdict = forgetting_status(fg)
    cls = {"REGRESSION": "regressed", "ok": "better"}.get(verdict, "na")
    status = f"<span class='{cls}'>{escape(verdict)}</span>"
    return (f"<h2>Forgetting check</h2><p>General-text perplexity {perplexity_text(fg['before'])} &rarr; {perplexity_text(fg['after'])} "
            f"({fg['relative_change']:+.1%}, threshold +{fg['threshold']:.0%}, {fg['n_texts']} texts): {status}</p>"
            + _img(plot_forgetting(fg), "forgetting"))  # fmt: skip


def render_html(d: ReportData) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(d.title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{escape(d.title)}</h1>"]  # fmt: skip
    if d.loss_log:
        parts += ["<h2>Loss</h2>", _img(plot_losses(d.loss_log), "loss curves")]
    if d.results:
        parts.append(_metrics_table(d))
    if d.comparison:
        parts.append(_comparison(d.comparison))
    if d.forgetting:
        parts.append(_forgetting(d.forgetting))
    if d.comparison:
        parts.append(_flipped(d.comparison))
    if d.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in d.notes) + "</ul>")
    if d.data_card:
        parts.append(f"<section class='card'>{_markdown(demote(d.data_card))}</section>")
    if d.setup:
        parts.append(f"<h2>Training setup</h2><p>{escape(d.setup)}</p>")
    if d.manifest is not None:
        parts.append(f"<h2>Data manifest</h2><pre>{escape(json.dumps(d.manifest, indent=1))}</pre>")
    if d.config:
        parts.append(f"<h2>Config</h2><pre>{escape(d.config)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _markdown(text: str) -> str:
    """Markdown (the data card) as HTML; raw HTML in it is escaped, not passed through."""
    from markdown_it import MarkdownIt

    return str(MarkdownIt("commonmark", {"html": False}).enable("table").render(text))
