"""The distributed setup of a run: what the launcher asked for, what accelerate set up, and refusing a difference.

`accelerate launch` hands its config to the worker processes as environment variables (ACCELERATE_USE_FSDP and
FSDP_*, ACCELERATE_USE_DEEPSPEED, WORLD_SIZE, ...). accelerate applies FSDP and DeepSpeed only to accelerator
processes: on CPU processes it quietly runs plain multi-process data parallel (MULTI_CPU) whatever was asked.
Where no GPU is present tunelab keeps the request instead: FSDP2 and DeepSpeed ZeRO run over gloo on CPU
processes through accelerate's own code (wrapping, sharded checkpoints, gathering final/), which is how those
paths are tested without GPUs. Whatever still differs from the request (the type, the number of processes, a
setting the run cannot honour) is refused before a model loads. `describe` is the setup that really ran: it goes
to environment.json ("distributed"), the report and the model card.

The launcher's own command line (the parent process, when it is `accelerate launch`) is read too, since its
single-process launcher (`--cpu`, or `use_cpu: true` with `distributed_type: MULTI_CPU`) passes nothing on.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
import yaml

from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.methods import METHODS

FSDP, DEEPSPEED = "FSDP", "DEEPSPEED"
ONE_PROCESS_HINT = (
    "accelerate's single-process launcher runs when `--cpu` is given or the config says `use_cpu: true` with "
    "`distributed_type: MULTI_CPU`; for several CPU processes use examples/accelerate/multi_cpu.yaml "
    "(distributed_type: MULTI_GPU, run over gloo when there is no GPU) or fsdp.yaml / deepspeed_zero*.yaml"
)


@dataclass(frozen=True)
class Request:
    """What the launcher asked for: `kind` FSDP, DEEPSPEED or "" (data parallel or one process)."""

    kind: str = ""
    processes: int = 1
    fsdp_version: int | None = None
    launcher: str = ""  # the `accelerate launch` command line, when that started this process
    mixed_precision: str | None = None  # the launcher's; train.precision decides what runs

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.kind or "data parallel or one process", "processes": self.processes,
                "fsdp_version": self.fsdp_version, "launcher_mixed_precision": self.mixed_precision,
                "launcher": self.launcher or None}  # fmt: skip


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def requested() -> Request:
    """The environment accelerate's launcher set, plus its command line and config file when it is our parent."""
    launcher, asked = _launcher()
    kind = FSDP if _flag("ACCELERATE_USE_FSDP") else DEEPSPEED if _flag("ACCELERATE_USE_DEEPSPEED") else ""
    kind = kind or asked.get("kind", "")
    version = os.environ.get("FSDP_VERSION") or asked.get("fsdp_version")
    return Request(
        kind=kind,
        processes=int(os.environ.get("WORLD_SIZE") or 0) or int(asked.get("processes") or 1),
        fsdp_version=int(version) if kind == FSDP and version else None,
        launcher=launcher,
        mixed_precision=os.environ.get("ACCELERATE_MIXED_PRECISION"),
    )


def _launcher() -> tuple[str, dict[str, Any]]:
    """(command line, what it asks: kind, processes, fsdp_version) of an `accelerate launch` parent process."""
    try:
        argv = psutil.Process().parent().cmdline()  # type: ignore[union-attr]
    except (psutil.Error, AttributeError):
        return "", {}
    if "launch" not in argv or not any(Path(a).name.startswith("accelerate") for a in argv[:3]):
        return "", {}
    opts = _launch_options(argv[argv.index("launch") + 1 :])
    asked = _config_file_asks(opts.get("config_file"), cpu="cpu" in opts)
    if "use_fsdp" in opts or "use_deepspeed" in opts:
        asked["kind"] = FSDP if "use_fsdp" in opts else DEEPSPEED
    if opts.get("fsdp_version"):
        asked["fsdp_version"] = opts["fsdp_version"]
    if opts.get("num_processes"):
        asked["processes"] = opts["num_processes"]
    return shlex.join(argv), asked


def _launch_options(args: list[str]) -> dict[str, str]:
    """accelerate launch's own options (up to the training script or module); flags map to ""."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] not in ("-m", "--module"):
        key, _, value = args[i].lstrip("-").replace("-", "_").partition("=")
        takes_value = not value and i + 1 < len(args) and not args[i + 1].startswith("-")
        if takes_value and key not in ("cpu", "use_fsdp", "use_deepspeed", "multi_gpu", "debug", "quiet"):
            value, i = args[i + 1], i + 1
        out[key] = value
        i += 1
    return out


def _config_file_asks(path: str | None, cpu: bool) -> dict[str, Any]:
    if path is None:
        from accelerate.commands.config import default_config_file

        path = None if cpu else default_config_file  # accelerate reads its default config only without --cpu
    try:
        conf = yaml.safe_load(Path(path).read_text()) if path else None
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(conf, dict):
        return {}
    kind = {FSDP: FSDP, DEEPSPEED: DEEPSPEED}.get(str(conf.get("distributed_type")), "")
    version = (conf.get("fsdp_config") or {}).get("fsdp_version") if kind == FSDP else None
    return {"kind": kind, "processes": conf.get("num_processes"), "fsdp_version": version or (1 if kind else None)}


# ------------------------------------------------------------------ the accelerator


def accelerator(precision: str, req: Request) -> Any:
    """accelerate's Accelerator for `req`; on a machine without a GPU, FSDP2 and DeepSpeed run on CPU processes."""
    from accelerate import Accelerator

    gpu = torch.cuda.is_available()
    if req.kind and not gpu:
        if req.kind == FSDP and req.fsdp_version != 2:
            raise TunelabError(
                f"FSDP version {req.fsdp_version} cannot run on CPU processes (torch refuses sync_module_states "
                "on cpu): set fsdp_version: 2 in the accelerate config (examples/accelerate/fsdp.yaml)"
            )
        _shard_on_cpu()
    # DeepSpeed is applied only when the accelerator is not asked for the CPU (see _shard_on_cpu)
    return Accelerator(mixed_precision=precision, cpu=not gpu and req.kind != DEEPSPEED)


def _shard_on_cpu() -> None:
    """accelerate applies its FSDP plugin only to accelerator process groups (MULTI_GPU, ...), and DeepSpeed only
    when not told `cpu`: start the CPU process group (gloo) first, then let AcceleratorState take it for such a
    group, so that the plugin asked for is applied there too. The device stays the CPU."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=True)
    if state.distributed_type == DistributedType.MULTI_CPU:
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU


def check(acc: Any, req: Request, cfg: RunConfig) -> None:
    """Refuse a setup that differs from the request, or that this run cannot honour; complete DeepSpeed's config."""
    ran = acc.distributed_type.value
    by = f" (started by: {req.launcher})" if req.launcher else ""
    if acc.num_processes != req.processes:
        raise TunelabError(f"the launcher asked for {req.processes} processes but {acc.num_processes} started{by}: "
                           f"{ONE_PROCESS_HINT}")  # fmt: skip
    if req.kind and ran != req.kind:
        why = "ACCELERATE_USE_CPU is set" if _flag("ACCELERATE_USE_CPU") else "accelerate did not apply it"
        raise TunelabError(f"the launcher asked for {req.kind} but accelerate set up {ran} ({why}); refusing to "
                           f"train without the sharding asked for{by}")  # fmt: skip
    method = METHODS[cfg.method.name]
    if sharded_params(acc) and method.whole_weights:
        raise TunelabError(f"method {cfg.method.name}: it generates with the whole model, which FSDP and ZeRO-3 "
                           "shard; use DDP (examples/accelerate/ddp.yaml) or ZeRO-2")  # fmt: skip
    if ran == DEEPSPEED:
        _complete_deepspeed(acc.state.deepspeed_plugin.deepspeed_config, cfg)


def _complete_deepspeed(ds: dict[str, Any], cfg: RunConfig) -> None:
    t = cfg.train
    if t.grad_accum > 1:
        raise TunelabError("train.grad_accum: DeepSpeed steps on every backward here; set grad_accum: 1 "
                           "(raise batch_size instead)")  # fmt: skip
    clip = ds.get("gradient_clipping", "auto")
    ours = t.max_grad_norm or 0.0
    if clip == "auto":
        ds["gradient_clipping"] = ours
    elif float(clip) != ours:
        raise TunelabError(f"train.max_grad_norm is {t.max_grad_norm} but DeepSpeed clips at gradient_clipping: "
                           f"{clip} (it clips itself, before tunelab could): make them equal")  # fmt: skip
    zero = ds.get("zero_optimization", {})
    if zero.get("stage") == 3 and not zero.get("stage3_gather_16bit_weights_on_model_save"):
        raise TunelabError("DeepSpeed ZeRO-3: set zero3_save_16bit_model: true in the accelerate config "
                           "(final/ is gathered from the shards at the end)")  # fmt: skip
    # tunelab batches itself (no dataloader goes through prepare), so DeepSpeed is told the micro-batch here
    ds["train_micro_batch_size_per_gpu"] = t.batch_size


def sharded_params(acc: Any) -> bool:
    """Whether each process holds only a shard of the weights (FSDP, ZeRO-3)."""
    ran = acc.distributed_type.value
    if ran == DEEPSPEED:
        return acc.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage") == 3
    return ran == FSDP


def gathers_final(acc: Any) -> bool:
    """Whether final/ is gathered from the processes (FSDP, DeepSpeed) rather than read from the local module."""
    return acc.distributed_type.value in (FSDP, DEEPSPEED)


def local_part(p: torch.Tensor) -> torch.Tensor:
    """This process's part of a parameter: an FSDP2 DTensor's shard, a ZeRO-3 partition, else the tensor."""
    if hasattr(p, "to_local"):
        return p.to_local()
    return getattr(p, "ds_tensor", p)


def tied_aliases(model: torch.nn.Module) -> set[str]:
    """Names of parameters that are another parameter (tied LM head and embeddings), after its first name."""
    seen: set[int] = set()
    aliases = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            aliases.add(name)
        seen.add(id(p))
    return aliases


def unwrap(acc: Any, module: torch.nn.Module) -> torch.nn.Module:
    """The prepared module without its DDP wrapper (FSDP2 wraps in place). accelerate's unwrap_model imports
    deepspeed whenever it is installed (seconds, and a log line), so it is used only under DeepSpeed."""
    if acc.distributed_type.value == DEEPSPEED:
        return acc.unwrap_model(module)
    from torch.nn.parallel import DistributedDataParallel

    inner = module.module if isinstance(module, DistributedDataParallel) else module
    return getattr(inner, "_orig_mod", inner)


@contextmanager
def one_process_loading(acc: Any) -> Iterator[None]:
    """Loading a model in one process of a sharded run (the closing evaluation): no ZeRO-3 partitioning at init,
    which would wait for the other processes."""
    if acc.distributed_type.value != DEEPSPEED:
        yield
        return
    with acc.state.deepspeed_plugin.zero3_init_context_manager(enable=False):
        yield


# ------------------------------------------------------------------ what ran


def describe(acc: Any, cfg: RunConfig, req: Request) -> dict[str, Any]:
    """The setup that really ran (environment.json "distributed")."""
    t = cfg.train
    return {
        "type": acc.distributed_type.value,
        "world_size": acc.num_processes,
        "processes_per_machine": int(os.environ.get("LOCAL_WORLD_SIZE") or acc.num_processes),
        "backend": getattr(acc.state, "backend", None),
        "device": acc.device.type,
        "sharding": _sharding(acc),
        "mixed_precision": _precision(acc),
        "per_process_batch": t.batch_size,
        "grad_accum": t.grad_accum,
        "global_batch": t.batch_size * t.grad_accum * acc.num_processes,
        "requested": req.as_dict(),
    }


def _sharding(acc: Any) -> dict[str, Any]:
    ran = acc.distributed_type.value
    if ran == FSDP:
        p = acc.state.fsdp_plugin
        if p.fsdp_version == 2:
            strategy = "FULL_SHARD" if p.reshard_after_forward is True else "SHARD_GRAD_OP"
        else:
            strategy = getattr(p.sharding_strategy, "name", str(p.sharding_strategy))
        return {
            "strategy": strategy,
            "fsdp_version": p.fsdp_version,
            "reshard_after_forward": p.reshard_after_forward if p.fsdp_version == 2 else None,
            "state_dict_type": getattr(p.state_dict_type, "name", str(p.state_dict_type)),
            "wrap": p.transformer_cls_names_to_wrap or (p.min_num_params and f"min {p.min_num_params} params"),
            "cpu_offload": type(p.cpu_offload).__name__ == "CPUOffloadPolicy" or bool(getattr(p.cpu_offload, "offload_params", False)),
            "cpu_ram_efficient_loading": p.cpu_ram_efficient_loading,
            "activation_checkpointing": p.activation_checkpointing,
        }  # fmt: skip
    if ran == DEEPSPEED:
        ds = acc.state.deepspeed_plugin.deepspeed_config
        zero = ds.get("zero_optimization", {})
        return {
            "strategy": f"ZeRO-{zero.get('stage', 0)}",
            "zero_stage": zero.get("stage", 0),
            "offload_optimizer": (zero.get("offload_optimizer") or {}).get("device", "none"),
            "offload_param": (zero.get("offload_param") or {}).get("device", "none"),
            "gradient_clipping": ds.get("gradient_clipping"),
        }
    return {"strategy": "none (one process)" if ran == "NO" else "replicated (DDP)"}


def _precision(acc: Any) -> str:
    if acc.distributed_type.value == DEEPSPEED:  # DeepSpeed's own config holds it (accelerate reports "no")
        ds = acc.state.deepspeed_plugin.deepspeed_config
        for name in ("bf16", "fp16"):
            if (ds.get(name) or {}).get("enabled") in (True, "true"):
                return name
        return "no"
    return str(acc.mixed_precision)
