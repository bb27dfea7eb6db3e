"""`tunelab export --push REPO`: upload an export folder to the Hugging Face Hub with huggingface_hub.

What is uploaded is the folder as it is (`upload_plan` lists it): the weights (safetensors or the GGUF),
tokenizer files, the model card README.md, export.json, verify.json and the Ollama Modelfile. The repo is
created when missing (private with `private=True`). Offline (HF_HUB_OFFLINE=1 or no network) or without
credentials the push fails with a message that says the export itself is complete and how to push it later.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError

REQUIRED = ("README.md", "export.json")
WEIGHTS = (".safetensors", ".gguf")


def upload_plan(folder: str | Path) -> list[str]:
    """Relative paths that a push uploads; refuses a folder that is not a complete export."""
    root = Path(folder)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    missing = [f for f in REQUIRED if f not in files]
    if missing:
        raise TunelabError(f"{root}: not a complete tunelab export (missing {', '.join(missing)}); nothing pushed")
    if not any(f.endswith(WEIGHTS) for f in files):
        raise TunelabError(f"{root}: no weights (*.safetensors or *.gguf) to push")
    return files


def push(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create `repo_id` if needed and upload the export folder; returns the commit URL."""
    from huggingface_hub import HfApi

    files = upload_plan(folder)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", allow_patterns=files,
                                 commit_message=f"tunelab export: {Path(folder).name}")  # fmt: skip
    except Exception as e:  # offline mode, no network, no or bad token, no permission: all end the same way
        raise TunelabError(
            f"push to {repo_id} failed: {_reason(e)}. The export itself is complete in {folder}; push it when online "
            f"and logged in (`hf auth login` or HF_TOKEN) with `hf upload {repo_id} {folder}`"
        ) from None
    return str(getattr(info, "commit_url", info))


def _reason(e: Exception) -> str:
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        return "the Hub is in offline mode (HF_HUB_OFFLINE is set)"
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no details'}"
