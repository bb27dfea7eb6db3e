"""What surrounds the writers: no folder left behind on failure, llama.cpp's tools (found or clearly missing,
and the commands tunelab would run), the refusals, and --push (offline here: the message and the layout)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from run_factory import make_run
from tests.conftest import run_cli

from tunelab.errors import TunelabError
from tunelab.export import llamacpp
from tunelab.export.exporters import export
from tunelab.export.push import push, upload_plan


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), "lora", lora_seed=4)


def rope_scaled_model(folder: Path) -> Path:
    """A Llama with linear RoPE scaling: loads fine, and the GGUF writer refuses it midway."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelab.models.presets import byte_tokenizer

    tok = byte_tokenizer()
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      vocab_size=len(tok), rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_failed_export_leaves_no_folder(lora_run: Path, tmp_path: Path) -> None:
    """The GGUF writer refuses after the model is loaded and the export begun: neither the export folder nor
    the parents it created remain, and nothing half-written sits beside them."""
    src = rope_scaled_model(tmp_path / "src")
    dest = tmp_path / "a" / "b" / "gguf"
    with pytest.raises(TunelabError, match="RoPE scaling 'linear' is not written by tunelab"):
        export(src, "gguf", dest, qtype="q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    (lora_run / "exports").mkdir()  # an existing parent stays; the export folder inside it does not
    with pytest.raises(TunelabError, match="--llama-cpp"):
        export(lora_run, "gguf", qtype="q4_k_m", llama_cpp=tmp_path / "none")
    assert list((lora_run / "exports").iterdir()) == []
    (lora_run / "exports").rmdir()


def test_k_quants_without_llama_cpp_say_what_to_do(lora_run: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-quantize anywhere
    monkeypatch.delenv(llamacpp.ENV, raising=False)
    with pytest.raises(TunelabError) as e:
        export(lora_run, "gguf", tmp_path / "out", qtype="q4_k_m")
    msg = str(e.value)
    assert "GGUF type q4_k_m needs llama.cpp's llama-quantize" in msg and "not found in PATH" in msg
    assert "--llama-cpp" in msg and "q4_0" in msg  # where to point it, and the types that need nothing
    assert not (tmp_path / "out").exists()
    with pytest.raises(TunelabError, match="convert_hf_to_gguf.py, which was not found in .*nowhere"):
        export(lora_run, "gguf", tmp_path / "out", qtype="f16", converter="llama.cpp", llama_cpp=tmp_path / "nowhere")


def test_llama_cpp_tools_are_found_and_commands_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Discovery in a llama.cpp folder (build/bin for the binary, the root for the script) and the exact command
    lines. The tools themselves are not installed here, so they are never run by the tests."""
    (tmp_path / "build" / "bin").mkdir(parents=True)
    (tmp_path / "build" / "bin" / "llama-quantize").write_text("")
    (tmp_path / "convert_hf_to_gguf.py").write_text("")
    monkeypatch.setenv(llamacpp.ENV, str(tmp_path))
    tools = llamacpp.find_tools()
    assert tools.quantize == tmp_path / "build" / "bin" / "llama-quantize"
    assert tools.convert == tmp_path / "convert_hf_to_gguf.py"
    q = llamacpp.quantize_command(tools.quantize, Path("in.gguf"), Path("out.gguf"), "q4_k_m")
    assert q == [str(tools.quantize), "in.gguf", "out.gguf", "Q4_K_M"]
    c = llamacpp.convert_command(tools.convert, Path("merged"), Path("x.gguf"), "f32")
    assert c == [sys.executable, str(tools.convert), "merged", "--outfile", "x.gguf", "--outtype", "f32"]


def test_refusals_name_what_is_supported(lora_run: Path, tmp_path: Path) -> None:
    with pytest.raises(TunelabError, match="GGUF type 'q3_0': tunelab writes f32, f16, bf16, q8_0"):
        export(lora_run, "gguf", tmp_path / "o", qtype="q3_0")
    with pytest.raises(TunelabError, match="expected one of tunelab, llama.cpp"):
        export(lora_run, "gguf", tmp_path / "o", converter="ollama")


def test_upload_layout_of_gguf_and_merged_exports(lora_run: Path, tmp_path: Path) -> None:
    gguf = export(lora_run, "gguf", tmp_path / "g", qtype="q8_0")
    assert upload_plan(gguf) == ["Modelfile", "README.md", "export.json", "lora-q8_0.gguf"]
    merged = export(lora_run, "merged", tmp_path / "m")
    files = upload_plan(merged)
    assert {"README.md", "export.json", "model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    assert not any(f.startswith(".") or "partial" in f for f in files)
    (merged / "README.md").unlink()
    with pytest.raises(TunelabError, match="missing README.md"):
        upload_plan(merged)


def test_push_offline_fails_clearly(lora_run: Path, tmp_path: Path) -> None:
    gguf = export(lora_run, "gguf", tmp_path / "g", qtype="q8_0")  # conftest sets HF_HUB_OFFLINE=1
    with pytest.raises(TunelabError) as e:
        push(gguf, "someone/tiny-gguf")
    msg = str(e.value)
    assert "push to someone/tiny-gguf failed" in msg and "offline" in msg
    assert f"complete in {gguf}" in msg and f"hf upload someone/tiny-gguf {gguf}" in msg


def test_cli_export_push_offline(lora_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    proc = run_cli("export", str(lora_run), "--format", "gguf", "--gguf-type", "q8_0", "-o", str(out),
                   "--push", "someone/tiny-gguf", check=False)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "export matches its run" in proc.stdout  # verified first, then the push fails
    assert "push to someone/tiny-gguf failed" in proc.stderr and "offline" in proc.stderr
    assert json.loads((out / "verify.json").read_text())["passed"]
