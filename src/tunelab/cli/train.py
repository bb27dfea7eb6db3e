"""`tunelab train | generate | chat`: thin Typer verbs over tunelab.api.

tunelab.cli mounts them as top-level verbs. Ctrl-C (SIGINT) or SIGTERM during training saves a checkpoint and exits
with status 128 + the signal number (130, 143), as a shell reports a process ended by that signal.
Each verb imports tunelab.api (torch, transformers) in its body, so that `tunelab --help` starts fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tunelab.errors import TunelabError

RunArg = Annotated[str, typer.Argument(help="A run directory, a preset name or a model folder.")]


def train_command(
    config: Annotated[Path, typer.Argument(help="Run config YAML (see examples/sft-lora.yaml).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="KEY=VALUE overrides, e.g. train.lr=1e-4 tuning.mode=full.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run's last complete checkpoint.")] = False,
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
    run: RunArg,
    prompt: Annotated[
        str, typer.Option("--prompt", "-p", help="The prompt (a user turn when the model has a chat template).")
    ],
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 is greedy; above 0 samples.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed for sampling.")] = 0,
    raw: Annotated[
        bool, typer.Option("--raw", help="Do not apply the chat template; continue the text as is.")
    ] = False,
) -> None:
    """Generate a completion: `tunelab generate runs/sft-lora --prompt "Reverse the word. kite"`."""
    from tunelab.api import generate

    typer.echo(generate(run, prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                        chat=False if raw else None))  # fmt: skip


CHAT_HELP = """commands (not sent to the model):
  /reset          start a new conversation (the system message stays)
  /help           this list
  /exit, exit, quit, /quit, or Ctrl-D   end the chat"""
CHAT_COMMANDS = {"/reset": "reset", "/help": "help", "/exit": "exit", "/quit": "exit", "exit": "exit", "quit": "exit"}


def chat_command(
    run: RunArg,
    system: Annotated[str | None, typer.Option(help="Optional system message.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per reply.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 is greedy; above 0 samples.")] = 0.0,
) -> None:
    """Chat interactively with the chat template, streaming tokens. /reset, /help; /exit, exit, quit or Ctrl-D end."""
    from tunelab.api import load_generator, stream

    model, tok = load_generator(run)
    if tok.chat_template is None:
        raise TunelabError(f"{run}: the tokenizer has no chat template; use `tunelab generate --raw`")
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    typer.echo("/help lists the commands; /exit or Ctrl-D ends")
    while (line := _read_turn()) is not None:
        command = CHAT_COMMANDS.get(line.lower())
        if command == "exit":
            break
        if command == "reset":
            messages = list(start)
            typer.echo("(new conversation)")
        elif command == "help":
            typer.echo(CHAT_HELP)
        elif line.startswith("/"):
            typer.echo(f"unknown command {line.split()[0]}; /help lists the commands")
        elif line:  # an empty line sends nothing
            messages.append({"role": "user", "content": line})
            reply = []
            for piece in stream(model, tok, messages, max_new_tokens, temperature):
                sys.stdout.write(piece)
                sys.stdout.flush()
                reply.append(piece)
            sys.stdout.write("\n")
            messages.append({"role": "assistant", "content": "".join(reply)})


def _read_turn() -> str | None:
    """The next line the user typed, stripped; None at end of input (Ctrl-D or the end of piped stdin)."""
    try:
        return input("> ").strip()
    except EOFError:
        sys.stdout.write("\n")
        return None


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help="Train and use models.")
app.command("train")(train_command)
app.command("generate")(generate_command)
app.command("chat")(chat_command)
