"""An Ollama Modelfile next to a GGUF: FROM, the chat template in Ollama's language, stops, system, sampling.

Ollama renders prompts with Go's text/template, not Jinja, so the model's chat template has to be
translated. Rather than recognizing templates by their text (every release words them differently),
tunelab renders a set of sample conversations (SAMPLES: one turn, a system prompt, several turns) with the
model's own Jinja template and with each Go template it knows (FAMILIES: ChatML as tunelab's presets and
Qwen write it, Llama 3, Mistral [INST], tunelab's fallback), and writes the first one whose text is
identical on every sample. A leading BOS written by the Jinja template is not part of the comparison when
the GGUF says the runtime adds BOS itself, as llama.cpp and Ollama do. No family matching means no TEMPLATE
line (Ollama then falls back to its own guess from the GGUF's chat template) and says why in export.json.
A model without a chat template (a base model) gets `{{ .Prompt }}`: the prompt as plain text.

Only the plain chat part is translated: tools, tool calls and tool results are not (Ollama's tool
rendering serializes JSON differently from Jinja's `tojson`). A Jinja template that refuses a system
message (Mistral's) makes the samples with one be skipped and SYSTEM be left out.

SYSTEM is the run's system prompt when every training conversation starts with the same one. Sampling
parameters are the decoding the run was evaluated with (eval.temperature, eval.top_p,
eval.max_new_tokens), with Ollama's extra defaults switched off (repeat_penalty 1; top_k 0) so that the
GGUF decodes as the run's evaluation did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.pipeline import load_records
from tunelab.data.records import Conversation
from tunelab.errors import TunelabError
from tunelab.export.gguf_vocab import adds_bos
from tunelab.export.gotemplate import GoTemplateError, render

# Message roles and contents chosen to exercise what templates do differently: system prompts, several
# turns, newlines and characters that need no escaping in either language.
SAMPLES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "Hi!"}],
    [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And another,\nplease: not blue."},
    ],
    [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Times 3?"},
        {"role": "assistant", "content": "12 (that is, 4 * 3)."},
        {"role": "user", "content": "Thanks & bye <3"},
    ],
]

# Each loop ends the prompt with the assistant header after the last non-assistant message (Ollama's
# convention); a conversation ending with an assistant message is left open for Ollama to continue.
_LAST = "{{- $last := eq (len (slice $.Messages $i)) 1 }}"
_CHATML = (
    "{{- range $i, $_ := .Messages }}\n" + _LAST + "\n"
    '{{- if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}{{ if not $last }}<|im_end|>\n{{ end }}\n'
    "{{- else }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}\n"
    '{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant\n{{ end }}\n'
    "{{- end }}"
)
_LLAMA3 = (
    "{{- range $i, $_ := .Messages }}\n" + _LAST + "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}"
    '{{ if or (ne .Role "assistant") (not $last) }}<|eot_id|>{{ end }}\n'
    '{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}\n'
    "{{- end }}"
)
_MISTRAL = (
    "{{- range $i, $_ := .Messages }}\n" + _LAST + "\n"
    '{{- if eq .Role "user" }}[INST] {{ .Content }} [/INST]\n'
    '{{- else if eq .Role "assistant" }}{{ .Content }}{{ if not $last }}<<EOS>><<AFTER_EOS>>{{ end }}\n'
    "{{- end }}\n"
    "{{- end }}"
)
_FALLBACK = (
    "{{- range $i, $_ := .Messages }}\n" + _LAST + "\n"
    '{{- if eq .Role "assistant" }}### Assistant:\n{{ .Content }}{{ if not $last }}<<EOS>>\n\n{{ end }}\n'
    '{{- else if eq .Role "system" }}### System:\n{{ .Content }}\n\n'
    '{{ else if eq .Role "user" }}### User:\n{{ .Content }}\n\n'
    '{{ else if eq .Role "tool" }}### Tool:\n{{ .Content }}\n\n'
    "{{ end }}\n"
    '{{- if and $last (ne .Role "assistant") }}### Assistant:\n{{ end }}\n'
    "{{- end }}"
)


RAW = "{{ .Prompt }}"  # Ollama's own template for models without a chat format


@dataclass(frozen=True)
class Family:
    template: str
    stops: tuple[str, ...]  # besides the EOS token text
    after_eos: str = ""


FAMILIES: dict[str, Family] = {
    "chatml": Family(_CHATML, ("<|im_start|>", "<|im_end|>")),
    "llama3": Family(_LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    "mistral": Family(_MISTRAL, ("[INST]", "[/INST]")),
    "mistral-v0.1": Family(_MISTRAL, ("[INST]", "[/INST]"), after_eos=" "),
    "tunelab-fallback": Family(_FALLBACK, ("### User:", "### System:")),
}


@dataclass
class Translation:
    family: str | None  # None: no known family renders like the model's template
    template: str | None = None
    stops: list[str] = field(default_factory=list)
    system_ok: bool = True  # the Jinja template accepts a system message
    samples: int = 0  # sample conversations compared
    reason: str | None = None


def go_template(family: str, eos: str) -> str:
    f = FAMILIES[family]
    return f.template.replace("<<EOS>>", eos).replace("<<AFTER_EOS>>", f.after_eos)


def ollama_data(messages: list[dict[str, str]]) -> dict[str, Any]:
    """What Ollama passes a template (the fields these templates can read)."""
    msgs = [{"Role": m["role"], "Content": m["content"], "ToolCalls": []} for m in messages]
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    return {"Messages": msgs, "System": system, "Tools": [], "Prompt": "", "Response": ""}


def jinja_renderings(tokenizer: Any) -> tuple[list[tuple[list[dict[str, str]], str]], bool]:
    """(sample, text the Jinja template renders for generation) pairs, and whether it takes a system message."""
    out, system_ok = [], True
    for sample in SAMPLES:
        try:
            text = tokenizer.apply_chat_template(sample, tokenize=False, add_generation_prompt=True)
        except Exception:  # the template raises on what it does not take (Jinja's raise_exception)
            if any(m["role"] == "system" for m in sample):
                system_ok = False
                continue
            raise
        out.append((sample, text))
    return out, system_ok


def translate(tokenizer: Any) -> Translation:
    """The Go template that renders like the tokenizer's chat template on every sample, if one does."""
    if not getattr(tokenizer, "chat_template", None):  # a base model: the prompt goes in as plain text
        return Translation("raw", RAW, [tokenizer.eos_token] if tokenizer.eos_token else [],
                           reason="the tokenizer has no chat template: prompts are plain text")  # fmt: skip
    renders, system_ok = jinja_renderings(tokenizer)
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    strip_bos = bool(bos) and adds_bos(tokenizer)
    for name, fam in FAMILIES.items():
        go = go_template(name, eos)
        try:
            same = all(_expected(text, bos, strip_bos) == render(go, ollama_data(s)) for s, text in renders)
        except GoTemplateError:
            same = False
        if same:
            stops = [*fam.stops, *([eos] if eos and eos not in fam.stops else [])]
            return Translation(name, go, stops, system_ok, len(renders))
    return Translation(None, system_ok=system_ok, samples=len(renders),
                       reason=f"none of {', '.join(FAMILIES)} renders like the model's chat template")  # fmt: skip


def _expected(text: str, bos: str, strip_bos: bool) -> str:
    """The Jinja text minus a leading BOS the runtime adds itself (Ollama templates never write BOS)."""
    return text[len(bos) :] if strip_bos and text.startswith(bos) else text


def modelfile_text(gguf_file: str, tr: Translation, system: str | None, params: dict[str, Any]) -> str:
    lines = [
        "# Ollama Modelfile written by tunelab.  Use:  ollama create NAME -f Modelfile  then  ollama run NAME",
        f"FROM ./{gguf_file}",
    ]
    if tr.family == "raw":
        lines.append(f"# TEMPLATE: {tr.reason}")
    elif tr.template is not None:
        lines.append(
            f"# TEMPLATE: {tr.family}, checked against the model's chat template on {tr.samples} conversations"
        )
        lines.append(f'TEMPLATE """{_triple_quoted(tr.template, "TEMPLATE")}"""')
    else:
        lines.append(f"# no TEMPLATE: {tr.reason}; Ollama guesses one from the GGUF's chat template")
    lines += [f"PARAMETER stop {_quoted(s)}" for s in tr.stops]
    lines += [f"PARAMETER {k} {v}" for k, v in params.items()]
    if system:
        lines.append(f'SYSTEM """{_triple_quoted(system, "SYSTEM")}"""')
    return "\n".join(lines) + "\n"


def _triple_quoted(text: str, what: str) -> str:

    if '"""' in text:
        raise TunelabError(f'Modelfile {what}: the text contains """, which a Modelfile cannot quote')
    return text


def _quoted(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sampling_params(run_config: Any | None) -> dict[str, Any]:
    """The run's evaluation decoding as Ollama parameters (Ollama defaults that would change it turned off)."""
    if run_config is None:
        return {"repeat_penalty": 1}
    ev = run_config.eval
    params: dict[str, Any] = {"temperature": ev.temperature}
    if ev.temperature > 0:
        params |= {"top_p": ev.top_p, "top_k": 0}
    return params | {"repeat_penalty": 1, "num_predict": ev.max_new_tokens}


def run_system_prompt(run_config: Any) -> tuple[str | None, str]:
    """The system prompt every training conversation starts with, if they all share one; and a note."""

    firsts: set[str | None] = set()
    try:
        for ds in run_config.data.train:
            for rec, _ in load_records(ds)[1]:
                msgs = rec.messages if isinstance(rec, Conversation) else ()
                firsts.add(msgs[0].content if msgs and msgs[0].role == "system" else None)
    except Exception as e:  # moved or unreadable data: the Modelfile is still useful without SYSTEM
        return None, f"training data not readable ({e}); no SYSTEM"
    if len(firsts) == 1 and None not in firsts:
        return firsts.pop(), "every training conversation starts with this system prompt"
    return None, "the training conversations share no single system prompt"


def write_modelfile(folder: Path, gguf_file: str, tokenizer: Any, run_config: Any | None) -> dict[str, Any]:
    """Write folder/Modelfile; returns what export.json records about it."""
    tr = translate(tokenizer)
    system, note = run_system_prompt(run_config) if run_config is not None else (None, "not a run: no SYSTEM")
    if system and not tr.system_ok:
        system, note = None, "the chat template takes no system message; SYSTEM left out"
    params = sampling_params(run_config)
    (folder / "Modelfile").write_text(modelfile_text(gguf_file, tr, system, params))
    return {"file": "Modelfile", "template": tr.family, "template_samples": tr.samples, "template_reason": tr.reason,
            "system": system, "system_note": note, "stops": tr.stops, "parameters": params}  # fmt: skip
