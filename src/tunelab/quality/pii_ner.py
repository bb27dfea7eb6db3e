"""The optional NER backend for PII: Presidio's analyzer (a spaCy English model) finds person names and places
that the rules cannot (a name with no honorific, a street in another language).

Off by default (`data.check.pii_ner`, `data clean --pii-ner`): it needs `presidio-analyzer` and a spaCy English
pipeline (`python -m spacy download en_core_web_sm`, or _lg), which spaCy downloads from its own releases, not
from PyPI; asking for it without them is an error that says what to install. Its PERSON spans are `name`
findings, LOCATION spans `address` (both with score >= MIN_SCORE).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from tunelab.errors import TunelabError

ENTITY_KINDS = {"PERSON": "name", "LOCATION": "address"}
MODELS = ("en_core_web_sm", "en_core_web_md", "en_core_web_lg")
MIN_SCORE = 0.5
INSTALL = "pip install presidio-analyzer && python -m spacy download en_core_web_sm"


def unavailable() -> str | None:
    """Why the backend cannot run here, or None when it can."""
    try:
        import spacy.util
        from presidio_analyzer import AnalyzerEngine  # noqa: F401
    except ImportError:
        return f"presidio-analyzer is not installed ({INSTALL})"
    if not any(spacy.util.is_package(m) for m in MODELS):
        return f"no spaCy English pipeline is installed ({', '.join(MODELS)}; {INSTALL})"
    return None


@lru_cache(maxsize=1)
def analyzer() -> Any:
    if why := unavailable():
        raise TunelabError(f"PII NER backend: {why}")
    import spacy.util
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    model = next(m for m in MODELS if spacy.util.is_package(m))
    conf = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}]}
    return AnalyzerEngine(nlp_engine=NlpEngineProvider(nlp_configuration=conf).create_engine())


def ner_spans(text: str, kinds: tuple[str, ...]) -> list[tuple[int, int, str]]:
    """(start, end, kind) of the names and places Presidio finds, for the kinds asked."""
    wanted = [e for e, k in ENTITY_KINDS.items() if k in kinds]
    if not wanted or not text.strip():
        return []
    found = analyzer().analyze(text=text, language="en", entities=wanted)
    return [(r.start, r.end, ENTITY_KINDS[r.entity_type]) for r in found if r.score >= MIN_SCORE]
