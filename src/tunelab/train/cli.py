"""`tunelab train | generate | chat`: thin Typer verbs over tunelab.api.

tunelab.cli mounts them as top-level verbs. Ctrl-C (SIGINT) or SIGTERM during training saves a checkpoint and exits
with status 128 + the signal number (130, 143), as a shell reports a process ended by that signal.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from tunelab.errors import TunelabError


def train_command(
    config: Path = typer.Argument(..., help="Run config YAML (see examples/sft-lora.yaml)."),
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides, e.g. train.lr=1e-4 tuning.mode=full."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's last complete checkpoint."),
) -> None:
    """Fine-tune a model: `tunelab train examples/sft-lora.yaml train.max_steps=50`."""
    from tunelab.api import TrainingInterrupted, train_from_file

    try:
        run_dir = train_from_file(config, overrides or [], resume=resume)
    except TrainingInterrupted as e:
        typer.echo(f"{e}\nresume with: tunelab train {config} {' '.join(overrides or [])} --resume".rstrip(), err=True)
        raise typer.Exit(128 + e.signum) from None
    from accelerate import PartialState

    if PartialState().is_main_process:  # under `accelerate launch` every process returns here
        typer.echo(f"run saved to {run_dir} (final model in {run_dir / 'final'})")


def generate_command(
    run: str = typer.Argument(..., help="A run directory, a preset name or a model folder."),
    prompt: str = typer.Option(
        ..., "--prompt", "-p", help="The prompt (a user turn when the model has a chat template)."
    ),
    max_new_tokens: int = typer.Option(128, help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, help="0 is greedy; above 0 samples."),
    seed: int = typer.Option(0, help="Seed for sampling."),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template; continue the text as is."),
) -> None:
    """Generate a completion: `tunelab generate runs/sft-lora --prompt "Reverse the word. kite"`."""
    from tunelab.api import generate

    typer.echo(generate(run, prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                        chat=False if raw else None))  # fmt: skip


def chat_command(
    run: str = typer.Argument(..., help="A run directory, a preset name or a model folder."),
    system: str | None = typer.Option(None, help="Optional system message."),
    max_new_tokens: int = typer.Option(256, help="Most tokens per reply."),
    temperature: float = typer.Option(0.0, help="0 is greedy; above 0 samples."),
) -> None:
    """Chat interactively with the chat template, streaming tokens; empty line or Ctrl-D ends."""
    from tunelab.api import load_generator, stream

    model, tok = load_generator(run)
    if tok.chat_template is None:
        raise TunelabError(f"{run}: the tokenizer has no chat template; use `tunelab generate --raw`")
    messages = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        messages.append({"role": "user", "content": line})
        reply = []
        for piece in stream(model, tok, messages, max_new_tokens, temperature):
            sys.stdout.write(piece)
            sys.stdout.flush()
            reply.append(piece)
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help="Train and use models.")
app.command("train")(train_command)
app.command("generate")(generate_command)
app.command("chat")(chat_command)
