"""Model loading: presets are deterministic, the real pretrained model loads offline, hub ids fail clearly."""

import pytest
import torch
from tests.conftest import shared_path

from tunelab.config import ModelConfig
from tunelab.errors import TunelabError
from tunelab.models.load import load_model, load_tokenizer


def test_preset_is_deterministic_from_its_seed():
    a, b, c = (load_model(ModelConfig(seed=s)) for s in (1, 1, 2))
    pa, pb, pc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert pa.dtype == torch.float32  # dtype auto on CPU


def test_stories260k_loads_with_its_own_tokenizer():
    path = str(shared_path("models", "stories260k"))
    cfg = ModelConfig(name_or_path=path)
    model, tok = load_model(cfg), load_tokenizer(cfg)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok) == 512
    ids = tok("Once upon a time").input_ids
    assert ids[0] == tok.bos_token_id == 1
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 512) and torch.isfinite(logits).all()
    assert tok.pad_token is not None  # set for batching


def test_hub_id_offline_says_how_to_use_a_local_folder():
    with pytest.raises(TunelabError, match="huggingface-cli download .* model.name_or_path: DIR"):
        load_tokenizer(ModelConfig(name_or_path="some-org/some-model"))


def test_missing_local_folder():
    with pytest.raises(TunelabError, match="folder './nowhere' not found"):
        load_model(ModelConfig(name_or_path="./nowhere"))


def test_bpe_preset_tokenizer_is_deterministic_and_word_level():
    from tunelab.models.presets import bpe_tokenizer

    a, b = bpe_tokenizer(), bpe_tokenizer()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert a.tokenize(" refund the headphones") == ["Ġrefund", "Ġthe", "Ġheadphones"]
    assert a.decode(a("Hé, 12345 ✓").input_ids, skip_special_tokens=True) == "Hé, 12345 ✓"  # bytes: anything encodes
    assert [a.convert_ids_to_tokens(i) for i in range(4)] == ["<|pad|>", "<|bos|>", "<|im_end|>", "<|im_start|>"]
