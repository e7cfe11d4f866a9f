"""What the machine can compute fast: the CPU's model and vector extensions, native bf16/fp16.

Reduced-precision inference is only a speed-up where the hardware computes in it. On x86 CPUs bfloat16
matrix products and convolutions are native with AVX512-BF16 or AMX (oneDNN uses them); without them
PyTorch converts every operand to float32 and back, which made the small subnet 38-47x *slower* than
float32 on AVX2-only AMD EPYC (Zen 3) CPUs. Half precision on CPU falls back to reference kernels
everywhere. Callers use :func:`slow_dtype_reason` to warn before such a run rather than after it.
"""
from __future__ import annotations

import os
import platform
from functools import lru_cache
from typing import FrozenSet, Optional, Union

import torch

# oneDNN ISA names below AVX512_CORE_BF16: capping oneDNN there disables its bf16 kernels
_ONEDNN_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")

# measured bf16 / fp32 time of the small subnet on CPUs without native bf16 (see docs/performance.md)
BF16_EMULATED_SLOWDOWN = "30-50x slower than float32 (38x and 47x measured for the small subnet on AVX2-only AMD EPYC CPUs)"


@lru_cache(maxsize=1)
def _cpuinfo() -> dict:
    """The first processor's entries of /proc/cpuinfo (empty where there is none)."""
    info: dict = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(":")
                info.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return info


def cpu_model_name() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("cpu model") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> FrozenSet[str]:
    """The CPU's feature flags as the kernel reports them (x86 ``flags``, Arm ``features``)."""
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("features") or "").split())


def _onednn_capped_below_bf16() -> bool:
    return os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).upper() in _ONEDNN_ISAS_WITHOUT_BF16


def cpu_has_native_bf16() -> bool:
    """True where bf16 matrix work runs in hardware: AVX512-BF16 or AMX on x86, the BF16 extension on Arm."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):  # the kernel's flags, not a private torch probe
        return bool({"avx512_bf16", "amx_bf16"} & cpu_flags()) and not _onednn_capped_below_bf16()
    if machine in ("aarch64", "arm64"):
        return "bf16" in cpu_flags()
    return False


def has_native_dtype(dtype: torch.dtype, device: Union[str, torch.device] = "cpu") -> bool:
    """Whether ``dtype`` inference runs in hardware on ``device`` (float32 always does)."""
    device = torch.device(device)
    if dtype == torch.float32:
        return True
    if device.type == "cuda":
        return dtype != torch.bfloat16 or torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return dtype == torch.bfloat16 and cpu_has_native_bf16()
    return True  # other accelerators: trust the user's choice


def slow_dtype_reason(dtype: torch.dtype, device: Union[str, torch.device] = "cpu") -> Optional[str]:
    """Why inference in ``dtype`` on ``device`` will be slow, with the fix; None when it will not be."""
    device = torch.device(device)
    if has_native_dtype(dtype, device):
        return None
    if device.type == "cpu" and dtype == torch.bfloat16:
        capped = " (oneDNN is capped below AVX512_CORE_BF16 by ONEDNN_MAX_CPU_ISA)" if _onednn_capped_below_bf16() else ""
        return (f"dtype bfloat16 on CPU '{cpu_model_name()}', which has no native bf16 (no AVX512-BF16 or AMX){capped}: "
                f"PyTorch emulates it, typically {BF16_EMULATED_SLOWDOWN}. "
                f"Use dtype float32 on this CPU; bfloat16 pays off on CPUs with AVX512-BF16/AMX and on CUDA GPUs "
                f"of compute capability 8.0 or newer.")
    if device.type == "cpu" and dtype == torch.float16:
        return ("dtype float16 on CPU: PyTorch's fp16 CPU convolutions fall back to slow reference kernels (often "
                "10-60x slower than float32). Use dtype float32 (or bfloat16 on a CPU with AVX512-BF16/AMX) on CPU, "
                "or float16 on CUDA.")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return (f"dtype {str(dtype).replace('torch.', '')} on {name}: no native support on this device; "
            f"use float32 (or float16).")


def describe_cpu() -> str:
    """One line naming the CPU, the kernels PyTorch dispatches to and whether bf16 is native."""
    flags = cpu_flags()
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16") if f in flags]
    native = "yes" if cpu_has_native_bf16() else "no"
    return (f"{cpu_model_name()} ({platform.machine()}, {os.cpu_count()} CPUs; ATen kernels "
            f"{torch.backends.cpu.get_cpu_capability()}; flags: {' '.join(wanted) or 'none of avx2/avx512/amx'}; "
            f"native bf16: {native})")
