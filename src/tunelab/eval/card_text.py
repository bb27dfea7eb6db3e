"""The sections of a model card, each a function of the run's (and export's) files as tunelab.eval.card reads
them. Numbers are printed with `num` (4 significant digits) so a card can be checked against its files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.models.presets import is_preset

KIND_TEXT = {
    "adapter": "a LoRA-family adapter (peft format); load it on top of the base model",
    "full": "the full fine-tuned weights (safetensors), with tokenizer and chat template",
    "merged": "the adapter merged into the base weights: a plain transformers model (safetensors), no peft needed",
    "gguf": "one GGUF file for llama.cpp, Ollama and other GGUF runtimes",
}

AUTO_CLASSES = {"seq": "AutoModelForSequenceClassification", "scalar": "AutoModelForSequenceClassification",
                "token": "AutoModelForTokenClassification"}  # fmt: skip


def hub_id(name: str) -> bool:
    """Whether a base model / dataset reference names a Hub repository (owner/name, not a local path)."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not Path(name).exists() and not name.startswith((".", "~"))


def num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _cfg(run: dict[str, Any] | None, *keys: str) -> Any:
    node: Any = (run or {}).get("config") or {}
    for k in keys:
        node = node.get(k, {}) if isinstance(node, dict) else {}
    return node if node != {} else None


def _base(run: dict[str, Any] | None, export: dict[str, Any] | None) -> str:
    name = _cfg(run, "model", "name_or_path") or (export or {}).get("source", "?")
    if hub_id(name):
        return f"[`{name}`](https://huggingface.co/{name})"

    return f"`{name}` (a tunelab preset built from config, for tests and demos)" if is_preset(name) else f"`{name}`"


def _tuning(run: dict[str, Any]) -> str:
    t = _cfg(run, "tuning") or {}
    mode = t.get("mode", "?")
    if mode in ("lora", "dora", "qlora"):
        lo = t.get("lora", {})
        targets = lo.get("target_modules")
        targets = ", ".join(targets) if isinstance(targets, list) else targets
        return f"`{mode}`: r {lo.get('r')}, alpha {num(lo.get('alpha'))}, dropout {num(lo.get('dropout'))}, target modules {targets}"
    if mode == "freeze":
        fr = t.get("freeze", {})
        return f"`freeze`: last {fr.get('trainable_layers')} blocks trained"
    if mode in ("prefix", "prompt"):
        return f"`{mode}`: {t.get('num_virtual_tokens')} virtual tokens"
    return f"`{mode}`"


def model_section(run: dict[str, Any] | None, kind: str, export: dict[str, Any] | None) -> str:
    rows = [("base model", _base(run, export))]
    if run:
        method = _cfg(run, "method") or {}
        extra = f" (beta {num(method['beta'])})" if method.get("beta") is not None else ""
        rows += [("training method", f"`{method.get('name')}`{extra}"), ("tuning", _tuning(run))]
    rows.append(("this folder", KIND_TEXT.get(kind, kind)))
    libs = ((run or {}).get("environment") or {}).get("libraries") or {}
    if libs:
        rows.append(("trained with", ", ".join(f"{k} {v}" for k, v in libs.items())))
    return "## Model details\n\n| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def data_section(run: dict[str, Any]) -> str:
    formats = {
        d["path"]: d.get("format") for d in (_cfg(run, "data", "train") or []) + (_cfg(run, "data", "eval") or [])
    }
    out = ["## Training data\n"]
    if run["manifest"]:
        out.append("| file | format | sha256 | records | train | eval |\n|---|---|---|---|---|---|")
        out += [f"| `{m['path']}` | {formats.get(m['path'], '?')} | `{m['sha256']}` | {m.get('records', '?')} | "
                f"{m.get('train', '?')} | {m.get('eval', '?')} |" for m in run["manifest"]]  # fmt: skip
    else:
        out.append("The run has no data manifest (data_manifest.json).")
    out.append("\n" + _check_text(run["check"]))
    return "\n".join(out) + "\n"


def _check_text(check: dict[str, Any] | None) -> str:
    if not check:
        return "The data check did not run before training (`data.check: null`)."
    s = check["summary"]
    verdict = "passed" if check.get("ok") else "failed"
    text = f"Data check before training: {s['error']} errors, {s['warning']} warnings, {s['info']} info ({verdict})."
    severity = {p["code"]: p["severity"] for p in check.get("problems", [])}
    if s.get("by_code"):
        text += "\n\n| check | severity | problems | records |\n|---|---|---|---|\n"
        text += "".join(f"| {code} | {severity.get(code, '?')} | {c['problems']} | {c['records']} |\n"
                        for code, c in s["by_code"].items())  # fmt: skip
    return text + "\nThe full findings are in the run's data_check.json and data_card.md."


def setup_line(d: dict[str, Any]) -> str:
    """One line for a run's distributed setup (environment.json "distributed", written by tunelab.train)."""
    kind, sh, world = str(d.get("type", "?")), d.get("sharding") or {}, d.get("world_size")
    names = {"NO": "one process", "FSDP": f"FSDP{sh.get('fsdp_version', '')} {sh.get('strategy', '')}",
             "DEEPSPEED": f"DeepSpeed {sh.get('strategy', '')}"}  # fmt: skip
    name = names.get(kind, "DDP" if kind.startswith("MULTI_") else kind)
    where = f"{world} process(es) ({d.get('backend') or 'no process group'}, {d.get('device')})"
    batch = (f"batch {d.get('per_process_batch')} per process x {d.get('grad_accum')} accumulation x {world} "
             f"process(es) = {d.get('global_batch')}")  # fmt: skip
    return f"{name} on {where}; mixed precision {d.get('mixed_precision')}; {batch}"


def training_section(run: dict[str, Any]) -> str:
    tr, data = _cfg(run, "train") or {}, _cfg(run, "data") or {}
    length = tr.get("max_steps") and f"{tr['max_steps']} steps" or f"{num(tr.get('epochs'))} epochs"
    rows = [
        ("length", length),
        ("batch size", f"{tr.get('batch_size')} per process x {tr.get('grad_accum')} accumulation"),
        (
            "learning rate",
            f"{num(tr.get('lr'))}, {tr.get('schedule')} schedule, warmup ratio {num(tr.get('warmup_ratio'))}",
        ),
        ("weight decay / max grad norm", f"{num(tr.get('weight_decay'))} / {num(tr.get('max_grad_norm'))}"),
        ("precision", tr.get("precision")),
        (
            "sequence length",
            f"{data.get('max_length')} tokens, packing {data.get('packing')}, "
            f"loss on inputs {data.get('train_on_inputs')}",
        ),  # fmt: skip
        ("seed", tr.get("seed")),
    ]
    setup = ((run.get("environment") or {}).get("distributed")) or None
    if setup:
        rows.insert(2, ("distributed setup", setup_line(setup)))
    out = "## Training procedure\n\n| setting | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    losses = [m for m in run["metrics"] if "loss" in m]
    evals = [m for m in run["metrics"] if "eval_loss" in m]
    if losses:
        out += (
            f"\nTrained for {losses[-1]['step']} optimizer steps; last logged training loss {num(losses[-1]['loss'])}"
        )
        out += f", last eval loss {num(evals[-1]['eval_loss'])} (step {evals[-1]['step']}).\n" if evals else ".\n"
    return out


def eval_section(run: dict[str, Any]) -> str:
    out = ["## Evaluation\n"]
    cmp = run["comparison"]
    ev = _cfg(run, "eval") or {}
    if cmp and cmp.get("rows"):
        n = max(r.get("n", 0) for r in cmp["rows"])
        sets = _cfg(run, "eval", "data") or _cfg(run, "data", "eval") or []
        names = ", ".join(f"`{d['path'].rsplit('/', 1)[-1]}`" for d in sets) or "the held-out split"
        out.append(f"The base model and the fine-tuned model on the same {n} examples ({names}) with the same decoding "
                   f"(temperature {num(ev.get('temperature'))}, at most {ev.get('max_new_tokens')} new tokens); "
                   f"differences with a paired bootstrap 95% confidence interval ({ev.get('bootstrap_resamples')} "
                   "resamples).\n")  # fmt: skip
        out.append(
            "| metric | base [95% CI] | fine-tuned [95% CI] | difference [95% CI] | verdict |\n|---|---|---|---|---|"
        )
        out += [_comparison_row(r) for r in cmp["rows"]]
    else:
        out.append("No base-vs-fine-tuned comparison in this run (no eval data or metrics, or `eval.baseline: false`).")
    out.append("\n" + _forgetting_text(run["forgetting"]))
    return "\n".join(out) + "\n"


def _comparison_row(r: dict[str, Any]) -> str:
    def ci(v: float, lo_hi: list[float] | None) -> str:
        return f"{num(v)} [{num(lo_hi[0])}, {num(lo_hi[1])}]" if lo_hi else num(v)

    diff = f"{r['diff']:+.4g} [{num(r['ci_low'])}, {num(r['ci_high'])}]"
    return f"| {r.get('label', r['metric'])} | {ci(r['value_a'], r.get('ci_a'))} | {ci(r['value_b'], r.get('ci_b'))} | {diff} | {r['verdict']} |"


def _forgetting_text(fg: dict[str, Any] | None) -> str:
    if not fg:
        return "The forgetting check did not run."
    verdict = "REGRESSED" if fg["regressed"] else "no regression"
    return (f"Forgetting check: perplexity on {fg['source']} ({fg['n_texts']} texts) went from {num(fg['before'])} to "
            f"{num(fg['after'])} ({fg['relative_change']:+.1%}; threshold +{fg['threshold']:.0%}): {verdict}.")  # fmt: skip


def export_section(export: dict[str, Any], verify: dict[str, Any] | None) -> str:
    fmt = export["format"]
    rows = [("format", f"{fmt} ({export['type']}), file `{export['file']}`" if fmt == "gguf" else fmt)]
    if fmt == "gguf":
        rows += [("architecture", f"{export.get('architecture')} (transformers {export.get('model_type')})"),
                 ("tokenizer", f"{export.get('tokenizer')}, pre-tokenizer `{export.get('pre_tokenizer')}` "
                               f"({export.get('pre_tokenizer_from')})")]  # fmt: skip
        if export.get("q8_0_head"):
            rows.append(("kept at q8_0 (output head)", ", ".join(export["q8_0_head"])))
        if export.get("f16_fallback"):
            rows.append(("f16 (rows not a multiple of 32)", ", ".join(export["f16_fallback"])))
        mf = export.get("modelfile") or {}
        if mf:
            tpl = f"template `{mf['template']}`" if mf.get("template") else "no template"
            tpl += f" ({mf['template_reason']})" if mf.get("template_reason") else ""
            rows.append(("Ollama Modelfile", f"{tpl}; SYSTEM: {mf.get('system_note')}"))
    out = "## This export\n\n| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    return out + "\n" + _verify_text(verify) + "\n"


def _verify_text(v: dict[str, Any] | None) -> str:
    if not v:
        return "Not verified yet: `tunelab verify EXPORT --against RUN` compares it with the run."
    verdict = "passed" if v["passed"] else "FAILED: " + "; ".join(v["failures"])
    tol = v["tolerance"]
    return (f"Parity with the run (`tunelab verify`, {v['prompts']} prompts, {v['positions']} positions): "
            f"max |logit difference| {num(v['max_abs_logit_diff'])}, mean {num(v['mean_abs_logit_diff'])}, "
            f"top-1 agreement {v['top1_agreement']:.1%}, greedy continuations equal {v['greedy_agreement']:.0%}, "
            f"tokenizer agreement {v['tokenizer_agreement']:.0%}; tolerance for {v['format']}: "
            f"logits {num(tol[0])}, greedy {tol[1]:.0%}, top-1 {tol[2]:.0%} -- {verdict}.")  # fmt: skip


def intended_use(run: dict[str, Any] | None, kind: str) -> str:
    if not run:
        return "## Intended use\n\nAs for the model it was exported from.\n"
    files = ", ".join(f"`{m['path'].rsplit('/', 1)[-1]}`" for m in run["manifest"] or []) or "its training data"
    return (
        f"## Intended use\n\nThe tasks and style of its training data ({files}), in the chat format it was "
        "trained with. It was evaluated only as shown above; check it on your own cases before relying on it.\n"
    )


def limitations(run: dict[str, Any] | None, export: dict[str, Any] | None, verify: dict[str, Any] | None) -> str:
    items = ["It inherits the base model's limitations, biases and license terms."]
    if run:
        cmp = run["comparison"]
        if cmp and cmp.get("rows"):
            items.append(f"The evaluation covers {max(r.get('n', 0) for r in cmp['rows'])} examples; "
                         "small evaluation sets give wide confidence intervals.")  # fmt: skip
        warnings = (run["check"] or {}).get("summary", {}).get("warning", 0)
        if warnings:
            items.append(f"The data check reported {warnings} warnings that were not errors (see above).")
        if (run["forgetting"] or {}).get("regressed"):
            items.append("The forgetting check found a regression on general text.")
        if _cfg(run, "model", "name_or_path") and "preset" in _base(run, None):
            items.append(
                "The base is a tiny preset: the model demonstrates the pipeline and is not useful for real tasks."
            )
    if export and export.get("format") == "gguf" and export.get("type") != "f32":
        items.append(
            f"The GGUF weights are rounded to {export['type']}; the parity figures above show what that costs."
        )
    if verify and not verify.get("passed"):
        items.append("This export did NOT pass verification against its run.")
    return "## Limitations\n\n" + "".join(f"- {i}\n" for i in items)


def usage_section(run: dict[str, Any] | None, kind: str, export: dict[str, Any] | None) -> str:
    if kind == "gguf":
        f = (export or {}).get("file", "model.gguf")
        code = f"ollama create my-model -f Modelfile\nollama run my-model\n# or: llama-cli -m {f} -cnv"
        return f"## How to use\n\n```bash\n{code}\n```\n"
    auto = AUTO_CLASSES.get((run or {}).get("head") or "", "AutoModelForCausalLM")
    if kind == "adapter":
        peft_auto = auto.replace("AutoModelFor", "AutoPeftModelFor")
        code = f'from peft import {peft_auto}\nmodel = {peft_auto}.from_pretrained("PATH")'
    else:
        code = f'from transformers import {auto}\nmodel = {auto}.from_pretrained("PATH")'
    code += '\n# with tunelab, from the run directory: tunelab generate RUN --prompt "..."'
    return f"## How to use\n\n```python\n{code}\n```\n"
