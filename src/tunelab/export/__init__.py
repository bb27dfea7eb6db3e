"""Exports of a trained run (hf, merged, gguf) and the parity check that proves they match the run.

Import from the modules: exporters (export, EXPORT_FORMATS), verify (verify, VerifyError, VerifyReport), gguf and
gguf_vocab (tunelab's GGUF writer), llamacpp (llama.cpp's tools), modelfile and gotemplate (Ollama), push (the Hub).
The package itself imports none of them, so that the CLI reads the GGUF type lists (gguf_types, llamacpp) without
importing torch.
"""
