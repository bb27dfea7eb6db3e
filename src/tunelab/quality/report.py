"""The check report: problems with a severity, their locations, the per-file stats, and an exit code.

A `Problem` is one finding that a person acts on as a unit: one duplicate group, one bad row, all emails
in one file. Its `locations` carry file, 1-based line (where the format has lines) and 0-based record
index, plus details such as the matching record or the PII kind. Severities: `error` stops a training
run's pre-flight and makes `check` exit 1; `warning` is shown and saved; `info` is only reported.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("error", "warning", "info")
SHOWN = {"schema": 10}  # locations listed in text per problem code (default: format_text's max_locations)


@dataclass
class Problem:
    severity: str
    code: str
    message: str
    locations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.locations) or 1

    def lines(self) -> list[int | None]:
        return [loc.get("line") for loc in self.locations]


@dataclass
class CheckReport:
    files: list[dict[str, Any]]
    problems: list[Problem]
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    strict: bool = False

    def by_severity(self, severity: str) -> list[Problem]:
        return [p for p in self.problems if p.severity == severity]

    def find(self, code: str, severity: str | None = None) -> list[Problem]:
        return [p for p in self.problems if p.code == code and (severity is None or p.severity == severity)]

    @property
    def errors(self) -> list[Problem]:
        return self.by_severity("error") + (self.by_severity("warning") if self.strict else [])

    @property
    def exit_code(self) -> int:
        """0: no errors; 1: errors (with `strict`, warnings count as errors)."""
        return 1 if self.errors else 0

    def summary(self) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {}
        for p in self.problems:
            counts.setdefault(p.code, {"problems": 0, "records": 0})
            counts[p.code]["problems"] += 1
            counts[p.code]["records"] += p.count
        return {**{s: len(self.by_severity(s)) for s in SEVERITIES}, "by_code": counts}

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 2),
            "summary": self.summary(),
            "files": self.files,
            "problems": [{**asdict(p), "count": p.count} for p in self.problems],
            "options": self.options,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def format_text(self, max_locations: int = 5) -> str:
        """Human-readable: per-file counts, then problems, errors first."""
        out = []
        for f in self.files:
            out.append(f"{f['path']} ({f['role']}, {f.get('format') or 'unknown format'}): "
                       f"{f['records']} records, {f['invalid']} invalid")  # fmt: skip
            if f.get("labels"):
                out.append(f"  labels: {len(f['labels'])} distinct, column {f['label_column']!r}")
            length = f.get("length", {})
            if length.get("count"):
                out.append(f"  length ({f['length_unit']}): min {length['min']}, p50 {length['p50']}, "
                           f"p95 {length['p95']}, max {length['max']}")  # fmt: skip
        order = {s: i for i, s in enumerate(SEVERITIES)}
        for p in sorted(self.problems, key=lambda p: order[p.severity]):
            out.append(f"[{p.severity}] {p.code}: {p.message}")
            shown = SHOWN.get(p.code, max_locations)
            for loc in p.locations[:shown]:
                out.append(f"    {describe(loc)}")
            if len(p.locations) > shown:
                out.append(f"    ... and {len(p.locations) - shown} more")
        s = self.summary()
        out.append(f"{s['error']} errors, {s['warning']} warnings, {s['info']} info ({self.seconds:.1f}s)")
        return "\n".join(out)


def describe(loc: dict[str, Any]) -> str:
    where = f"{loc['file']}:{loc['line']}" if loc.get("line") is not None else f"{loc['file']} record {loc['record']}"
    extra = ", ".join(f"{k}={v}" for k, v in loc.items() if k not in ("file", "line", "record"))
    return f"{where}" + (f" ({extra})" if extra else "")
