"""Devices the planner knows: peak dense FLOP/s from the vendors' data sheets, memory, and bf16 support.

Utilization (the fraction of peak a fine-tuning run reaches) is an assumption printed with every plan: 35% on GPUs
in bf16 (small models and short sequences reach less, large ones more), 35% of an assumed 50 GFLOP/s per core on
CPUs (fp32, AVX2/AVX-512 FMA). A calibration run (`tunelab plan --calibrate`) measures instead of assuming.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch


@dataclass(frozen=True)
class Device:
    name: str
    tflops: float  # peak dense TFLOP/s at the training precision (bf16/fp16 on GPUs, fp32 on CPUs)
    memory_gb: float
    gpu: bool = True
    bf16: bool = True
    utilization: float = 0.35


DEVICES: dict[str, Device] = {
    "t4": Device("t4", 65.0, 16, bf16=False),
    "v100": Device("v100", 125.0, 32, bf16=False),
    "a10g": Device("a10g", 70.0, 24),
    "l4": Device("l4", 121.0, 24),
    "rtx-3090": Device("rtx-3090", 71.0, 24),
    "rtx-4090": Device("rtx-4090", 165.0, 24),
    "a100-40gb": Device("a100-40gb", 312.0, 40),
    "a100-80gb": Device("a100-80gb", 312.0, 80),
    "h100-80gb": Device("h100-80gb", 989.0, 80),
    "h200": Device("h200", 989.0, 141),
}
CPU_GFLOPS_PER_CORE = 50.0


def cpu_device(threads: int | None = None) -> Device:
    """This machine's CPU: the torch threads training will use x an assumed per-core peak; memory: the RAM."""
    n = threads or max(1, psutil.cpu_count(logical=False) or 1)
    mem = psutil.virtual_memory().total / 2**30
    return Device(f"cpu ({n} threads)", n * CPU_GFLOPS_PER_CORE / 1000, round(mem, 1), gpu=False, bf16=False)


def this_machine(threads: int | None = None) -> Device:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0).lower()
        for key, dev in DEVICES.items():
            if key.split("-")[0] in name.replace(" ", "-"):
                mem = torch.cuda.get_device_properties(0).total_memory / 2**30
                return Device(dev.name, dev.tflops, round(mem, 1), bf16=torch.cuda.is_bf16_supported())
        mem = torch.cuda.get_device_properties(0).total_memory / 2**30
        return Device(name, 100.0, round(mem, 1), bf16=torch.cuda.is_bf16_supported(), utilization=0.3)
    return cpu_device(threads)
