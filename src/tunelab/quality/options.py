"""Settings for `check` and the pre-flight before training (a pydantic section like the run config's).

Kept here, not in `config.py`, so the quality package stands alone; the run config can embed it as a
`checks:` section.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tunelab.quality.pii import PII_KINDS


class CheckOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    near_duplicates: bool = Field(True, description="Look for near-duplicates and near leakage (MinHash/LSH).")
    near_threshold: float = Field(
        0.85,
        gt=0,
        le=1,
        description="Jaccard similarity of character 5-grams at which two records are near-duplicates.",
    )
    pii: bool = Field(True, description="Scan text fields for PII and secrets.")
    pii_kinds: list[str] = Field(default_factory=lambda: list(PII_KINDS), description="PII kinds to scan for.")
    tokenizer: str | None = Field(
        None,
        description="Tokenizer (preset name, local folder or hub id) for token lengths; none: characters.",
    )
    max_length: int | None = Field(None, ge=1, description="Report records longer than this (tokens or characters).")
    label_column: str | None = Field(
        None,
        description="Classification label column; default: label, category, intent or class when present.",
    )
    strict: bool = Field(False, description="Treat warnings as errors (exit status and pre-flight).")
