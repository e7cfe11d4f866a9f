"""Native bf16 detection and the warning before an emulated (many times slower) reduced-precision run."""
import platform
import warnings

import pytest
import torch

from lighthubert_s3prl import hardware
from lighthubert_s3prl.model.checkpoint import tiny_model_config
from lighthubert_s3prl.model.compact import CompactLightHuBERT
from lighthubert_s3prl.model.config import SubnetConfig
from lighthubert_s3prl.model.supernet import LightHuBERTSupernet
from lighthubert_s3prl.upstream.expert import UpstreamExpert

from .conftest import make_wavs


def _proc_flags():
    """The first processor's flags, read here independently of the library."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the flag names checked are x86's")
def test_native_bf16_matches_the_cpu_flags(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    flags = _proc_flags()
    assert hardware.cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)
    line = hardware.describe_cpu()
    assert f"native bf16: {'yes' if {'avx512_bf16', 'amx_bf16'} & flags else 'no'}" in line
    assert hardware.cpu_model_name() in line and torch.backends.cpu.get_cpu_capability() in line
    assert ("avx2" in line) == ("avx2" in flags)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 detection")
def test_native_bf16_follows_the_instructions_and_a_onednn_cap(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "amx_tile"}))
    assert not hardware.cpu_has_native_bf16()  # AMX tiles without their bf16 instructions do not count
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "amx_tile", "amx_bf16"}))
    assert hardware.cpu_has_native_bf16()
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert hardware.cpu_has_native_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")  # oneDNN then never uses its bf16 kernels
    assert not hardware.cpu_has_native_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert hardware.cpu_has_native_bf16()


def test_float32_is_never_slow_and_fp16_on_cpu_always_is(monkeypatch):
    for native in (False, True):
        monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
        assert hardware.slow_dtype_reason(torch.float32, "cpu") is None
        assert "float16 on CPU" in hardware.slow_dtype_reason(torch.float16, "cpu")
        assert (hardware.slow_dtype_reason(torch.bfloat16, "cpu") is None) == native


def _tiny_compact():
    supernet = LightHuBERTSupernet(tiny_model_config()).reset_parameters(0)
    return CompactLightHuBERT.from_supernet(supernet, SubnetConfig.uniform(64, 1, 128, 10)).eval()


def test_bf16_without_native_support_warns_once_naming_dtype_slowdown_and_fix(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    compact = _tiny_compact().to(torch.bfloat16)
    wavs = make_wavs([4000, 3000])
    with pytest.warns(RuntimeWarning) as record, torch.no_grad():
        out = compact.forward_utterances(wavs)
        compact(torch.stack([wavs[0][:3000], wavs[1]]).bfloat16())  # a second forward does not warn again
    assert len(record) == 1
    message = str(record[0].message)
    assert "dtype bfloat16" in message and "no native bf16" in message
    assert "30-50x slower than float32" in message and "Use dtype float32" in message
    assert out.hidden_states[-1].dtype == torch.bfloat16  # warned, and still ran as asked


def test_bf16_with_native_support_and_float32_do_not_warn(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    wavs = make_wavs([4000])
    for dtype in (torch.bfloat16, torch.float32):
        compact = _tiny_compact().to(dtype)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("error")
            compact.forward_utterances(wavs)


@pytest.mark.parametrize("implementation", ["compact", "supernet"])
def test_upstream_bf16_warns_on_either_implementation(implementation, tiny_ckpt, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    up = UpstreamExpert(str(tiny_ckpt), implementation=implementation, dtype="bfloat16").eval()
    with pytest.warns(RuntimeWarning, match="dtype bfloat16 on CPU .* Use dtype float32"), torch.no_grad():
        up(make_wavs([4000]))
