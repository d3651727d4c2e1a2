"""Device and dtype choices: native bfloat16 only, float16 with loss scaling on GPUs without it, MPS refusals,
the dtype inference holds the model in, and TF32 on CUDA only."""

import pytest
import torch

from lmkit.device import has_native_bf16, resolve_autocast_dtype, resolve_inference_dtype, use_tf32
from lmkit.errors import InputError

CUDA = torch.device("cuda")
MPS = torch.device("mps")
CPU = torch.device("cpu")


@pytest.fixture
def gpu(monkeypatch):
    """Pretend to be on a CUDA GPU; `gpu(native)` sets whether it has native bfloat16 (emulation always counts)."""

    def set_native(native: bool) -> None:
        def is_bf16_supported(including_emulation: bool = True) -> bool:
            return including_emulation or native

        monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)

    return set_native


@pytest.fixture
def mac(monkeypatch):
    """Pretend to be on a Mac; `mac(major)` sets its macOS version."""

    def set_version(major: int) -> None:
        monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda want_major, want_minor: major >= want_major)

    return set_version


def test_auto_is_bfloat16_on_a_gpu_with_native_bfloat16(gpu):
    gpu(True)
    assert resolve_autocast_dtype("auto", CUDA) == torch.bfloat16
    assert resolve_inference_dtype("auto", CUDA) == torch.bfloat16


def test_an_emulating_gpu_trains_auto_in_float16_and_infers_in_float32(gpu):
    gpu(False)  # a V100 or T4: torch's default is_bf16_supported() says True there
    assert not has_native_bf16(CUDA)
    assert resolve_autocast_dtype("auto", CUDA) == torch.float16
    assert resolve_inference_dtype("auto", CUDA) == torch.float32
    with pytest.raises(InputError, match="no native bfloat16"):
        resolve_autocast_dtype("bfloat16", CUDA)
    with pytest.raises(InputError, match="no native bfloat16.*--dtype float16"):
        resolve_inference_dtype("bfloat16", CUDA)


def test_mps_bfloat16_needs_macos_14(mac):
    mac(13)
    with pytest.raises(InputError, match="bfloat16 on MPS needs macOS 14"):
        resolve_autocast_dtype("bfloat16", MPS)
    with pytest.raises(InputError, match="bfloat16 on MPS needs macOS 14"):
        resolve_inference_dtype("bfloat16", MPS, "--dtype")
    assert resolve_autocast_dtype("float16", MPS) == torch.float16
    mac(14)
    assert resolve_autocast_dtype("bfloat16", MPS) == torch.bfloat16


@pytest.mark.parametrize("device", [CPU, MPS])
def test_auto_keeps_float32_off_cuda(device, mac):
    mac(15)
    assert resolve_autocast_dtype("auto", device) is None
    assert resolve_inference_dtype("auto", device) == torch.float32


def test_named_dtypes_and_an_unknown_one():
    assert resolve_autocast_dtype("float32", CPU) is None
    assert resolve_inference_dtype("float16", CPU) == torch.float16
    assert resolve_inference_dtype("bfloat16", CPU) == torch.bfloat16
    with pytest.raises(InputError, match="unknown --dtype 'half'; use auto, bfloat16, float16, float32"):
        resolve_inference_dtype("half", CPU)


def test_tf32_is_switched_on_for_cuda_only():
    before, cudnn_before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("highest")
        use_tf32(CPU)
        assert torch.get_float32_matmul_precision() == "highest"
        use_tf32(CUDA)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
        torch.backends.cudnn.allow_tf32 = cudnn_before
