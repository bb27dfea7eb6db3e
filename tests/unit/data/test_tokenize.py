"""Golden tests: record -> tokens + loss mask, for every format, through a real chat template and the fallback."""

import pytest
from tests.conftest import shared_path
from transformers import AutoTokenizer

from tunelab.data.formats import FORMATS
from tunelab.data.records import Conversation, Message
from tunelab.data.tokenize import FALLBACK_TEMPLATE, IGNORE, Encoder, TemplateError, chat_template_for, truncate
from tunelab.models.presets import byte_tokenizer

BOS, END = "<|bos|>", "<|im_end|>"


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def trained_segments(tok, ex):
    """Decoded runs of consecutive tokens that carry loss."""
    runs, cur = [], []
    for tid, lab in zip(ex.input_ids, ex.labels):
        if lab != IGNORE:
            assert lab == tid  # labels are the token itself, unshifted
            cur.append(tid)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def check(tok, ex, text, trained):
    assert ex.input_ids == tok(text, add_special_tokens=False).input_ids
    assert trained_segments(tok, ex) == trained


CHATML_CASES = [
    ("alpaca", {"instruction": "Add", "input": "2+2", "output": "4"},
     f"{BOS}<|im_start|>user\nAdd\n\n2+2{END}\n<|im_start|>assistant\n4{END}\n", [f"4{END}"]),
    ("messages", {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "A1", "weight": 0}, {"role": "user", "content": "Q"},
                               {"role": "assistant", "content": "A2"}]},
     f"{BOS}<|im_start|>system\nS{END}\n<|im_start|>user\nHi{END}\n<|im_start|>assistant\nA1{END}\n"
     f"<|im_start|>user\nQ{END}\n<|im_start|>assistant\nA2{END}\n", [f"A2{END}"]),
    ("sharegpt", {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"},
                                    {"from": "human", "value": "Again"}, {"from": "gpt", "value": "Yo2"}]},
     f"{BOS}<|im_start|>user\nHi{END}\n<|im_start|>assistant\nYo{END}\n<|im_start|>user\nAgain{END}\n"
     f"<|im_start|>assistant\nYo2{END}\n", [f"Yo{END}", f"Yo2{END}"]),
    ("prompt_completion", {"prompt": "The sky is", "completion": " blue"}, f"{BOS}The sky is blue{END}", [f" blue{END}"]),
    ("text", {"text": "Once upon a time"}, f"{BOS}Once upon a time{END}", [f"Once upon a time{END}"]),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "row", "text", "trained"), CHATML_CASES, ids=[c[0] for c in CHATML_CASES])
def test_golden_chatml(tok, fmt, row, text, trained):
    ex = Encoder(tok, chat_template_for(tok)).encode(FORMATS[fmt](row))
    check(tok, ex, text, trained)
    assert ex.input_ids.count(tok.bos_token_id) == 1


def test_golden_fallback_template(tok):
    enc = Encoder(tok, chat_template_for(tok, "fallback"))
    rec = FORMATS["alpaca"]({"instruction": "Hi", "output": "Yo", "system": "S"})
    text = f"{BOS}### System:\nS\n\n### User:\nHi\n\n### Assistant:\nYo{END}\n\n"
    check(tok, enc.encode(rec), text, [f"Yo{END}"])


def test_train_on_inputs_trains_everything_but_bos(tok):
    ex = Encoder(tok, chat_template_for(tok), train_on_inputs=True).encode(
        FORMATS["alpaca"]({"instruction": "Hi", "output": "Yo"})
    )
    assert ex.labels[1:] == ex.input_ids[1:]


def test_preference_views(tok):
    rec = FORMATS["preference"]({"prompt": "Q", "chosen": "good", "rejected": "bad"})
    views = Encoder(tok, chat_template_for(tok)).encode_views(rec)
    assert [v for v, _ in views] == ["chosen", "rejected"]
    assert trained_segments(tok, views[0][1]) == [f"good{END}"]
    assert trained_segments(tok, views[1][1]) == [f"bad{END}"]


def test_template_that_changes_earlier_turns_is_reported(tok):
    # Renders earlier assistant turns differently once a later turn exists (like templates that strip reasoning).
    bad = "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}[old]{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    conv = Conversation(
        (Message("user", "a"), Message("assistant", "b"), Message("user", "c"), Message("assistant", "d"))
    )
    with pytest.raises(TemplateError, match="turn 1"):
        Encoder(tok, bad).encode(conv)


def test_truncate_keeps_the_start(tok):
    ex = Encoder(tok, chat_template_for(tok)).encode(FORMATS["text"]({"text": "abcdef"}))
    assert truncate(ex, 3).input_ids == ex.input_ids[:3]


def test_real_tokenizer_without_template_uses_fallback_with_one_bos():
    tok = AutoTokenizer.from_pretrained(shared_path("models", "stories260k"))
    assert tok.chat_template is None
    template = chat_template_for(tok)
    assert template == FALLBACK_TEMPLATE
    ex = Encoder(tok, template).encode(FORMATS["alpaca"]({"instruction": "Tell a story", "output": "Tim ran."}))
    assert ex.input_ids[0] == tok.bos_token_id and ex.input_ids.count(tok.bos_token_id) == 1
    assert ex.input_ids.count(tok.eos_token_id) == 1
    trained = [t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE]
    assert trained[-1] == tok.eos_token_id  # the model learns to stop
    assert tok.decode(trained, skip_special_tokens=True).strip() == "Tim ran."
    plain = Encoder(tok, template).encode(FORMATS["text"]({"text": "Tim ran."}))
    assert plain.input_ids[0] == tok.bos_token_id and plain.input_ids[-1] == tok.eos_token_id
