"""The compute dtype: fp32 everywhere (the default), or bf16 *model forwards* with everything else in fp32.

Why bf16: on a CPU with AMX (and on most GPUs) a bf16 matmul or convolution runs about twice as fast as fp32: on a
2-core Xeon with AMX the world UNet at batch 128 with guidance took 151 ms per forward under bf16 autocast against
292 ms in fp32 (relative output error 0.5 %). With AVX512-BF16 alone (a 2-core AMD EPYC) sampling gained 1.15-1.3x
and the update lost (its backward 1.5-1.8x slower), so whole stages came out even (``benchmarks/speed.py
--dtype-compare``). Why only the forwards: the RL quantities are differences of small numbers (a DDIM
step's log-density over a variance of 1e-4, an importance ratio ``exp(log p - log p_old)`` clipped at 1 +- 0.1), so
they are computed from fp32 inputs in fp32, as DDPO does under mixed precision.

Where bf16 applies (``torch.autocast``, opted in at each site by :func:`model_autocast`): the UNet forward
(:func:`b2lib.algorithm.sampling.predict_noise`, which sampling, tree sampling, the update's log-prob recomputation and
the reference model of dpok/grpo all call), the VAE decode (:func:`b2lib.algorithm.sampling.decode_latents`), the reward
models (:class:`b2lib.rewards.base.ClipScore`'s image and text towers, :class:`b2lib.rewards.bertscore.BertScore`'s text
model and BLIP captioner). Each site returns fp32 (the noise prediction in the latents' dtype, images and scores as
float32).

What stays fp32: the weights (the LoRA adapter's trained parameters are fp32 master weights; autocast casts a copy
per op), the text encoder (one forward per prompt batch; its embeddings are stored with the trajectories, so they
stay the same under both dtypes), the DDIM step and its log-probability (:mod:`b2lib.policies.ddim`), advantages, the
PPO loss and the optimizer. The sites opt in rather than the DDIM code opting out, so no elementwise op of the RL maths
ever runs under autocast, whatever torch's autocast op lists say.

What it costs the RL maths (world model, 20 steps): the guided noise prediction differs from fp32 by 2.5-5 %, a
transition's log-prob by 1.5e-3 on average and up to 0.03-0.08 at the step whose DDIM variance is smallest; and since
the trainer samples with the LoRA fused into the weights (``TrainerConfig.fuse_lora``) and recomputes through the
unfused adapter, which bf16 rounds differently, a bf16 update's first importance ratio is off 1 by that much too
(fp32: 1e-6). ``fuse_lora=False`` removes that part (0 on the EPYC) at the cost of slower sampling.

How it is set: :func:`compute_dtype` is a context (a :mod:`contextvars` variable, so per thread) that the trainer
(``TrainerConfig.dtype``), the evaluation (:func:`b2lib.evaluation.generate.evaluate_prompts` ``dtype=``) and the
benchmark enter; library functions read it at their model sites. ``"fp32"`` enters no autocast at all, so the default
path runs exactly the code it ran before this module existed (bit-identical results).

Hardware: bf16 without native support is emulated and slower than fp32, so asking for it there is an error
(:func:`check_dtype`, at config validation), not a silent fallback: a fallback would record ``dtype='bf16'`` in the
run's fingerprint for numbers computed in fp32.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import torch

__all__ = [
    "DTYPES",
    "DEFAULT_DTYPE",
    "compute_dtype",
    "current_dtype",
    "model_autocast",
    "cpu_info",
    "cpu_flags",
    "bf16_problem",
    "check_dtype",
    "default_device",
]

#: the compute dtypes a config may name
DTYPES = ("fp32", "bf16")
DEFAULT_DTYPE = "fp32"
#: the /proc/cpuinfo flags that mean native bf16 arithmetic: AVX512-BF16 (dot products, Cooper Lake, Zen 4, ...),
#: AMX-BF16 (tile matmuls, Sapphire Rapids and later); on ARM the ``bf16`` feature (ARMv8.6)
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_BF16_FLAGS = ("bf16",)

_DTYPE: contextvars.ContextVar[str] = contextvars.ContextVar("b2lib_compute_dtype", default=DEFAULT_DTYPE)


def _check_name(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}; got {dtype!r}.")
    return dtype


@contextlib.contextmanager
def compute_dtype(dtype: str | None) -> Iterator[None]:
    """Run the model forwards of the enclosed library calls in ``dtype`` (see the module docstring); nests, and
    restores the outer setting on exit. ``"fp32"`` switches bf16 off inside a bf16 region; ``None`` keeps the
    enclosing setting (a function's ``dtype=None`` default: inherit)."""
    if dtype is None:
        yield
        return
    token = _DTYPE.set(_check_name(dtype))
    try:
        yield
    finally:
        _DTYPE.reset(token)


def current_dtype() -> str:
    """The compute dtype the enclosing :func:`compute_dtype` set (``"fp32"`` outside any)."""
    return _DTYPE.get()


def model_autocast(device: torch.device | str | None = None):
    """The context a model site runs its forward in: ``torch.autocast(device type, bfloat16)`` under
    ``compute_dtype("bf16")``, else a no-op (nothing is entered, so fp32 runs untouched). The caller casts the forward's
    output back to fp32."""
    if _DTYPE.get() != "bf16":
        return contextlib.nullcontext()
    device_type = torch.device(device).type if device is not None else "cpu"
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


@functools.lru_cache(maxsize=1)
def _proc_cpuinfo() -> tuple[str, frozenset[str]] | None:
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    model, flags = "", frozenset()
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:  # x86 "flags", ARM "Features"
            flags = frozenset(value.split())
    return model, flags


def cpu_info() -> dict:
    """The CPU's model name and its bf16 flags, as the speed benchmark records them: ``model``, ``avx512_bf16``,
    ``amx_bf16`` (``None`` where /proc/cpuinfo cannot be read), ``torch_avx512_bf16`` / ``torch_amx_tile`` (torch's
    own probes, which also work without /proc), and ``native_bf16`` (what :func:`bf16_problem` decides from them)."""
    info = _proc_cpuinfo()
    probes = {
        "torch_avx512_bf16": _torch_probe("_is_avx512_bf16_supported"),
        "torch_amx_tile": _torch_probe("_is_amx_tile_supported"),
    }
    out: dict = {"model": info[0] if info else None}
    for flag in X86_BF16_FLAGS:
        out[flag] = (flag in info[1]) if info else None
    out.update(probes)
    out["native_bf16"] = bf16_problem("cpu") is None
    return out


def _torch_probe(name: str) -> bool | None:
    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe()) if probe is not None else None
    except Exception:  # a probe that is missing on this build or platform says nothing
        return None


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (``None`` where there is none: macOS, Windows)."""
    info = _proc_cpuinfo()
    return info[1] if info else None


def bf16_problem(device: torch.device | str = "cpu") -> str | None:
    """Why bf16 would not run natively on ``device`` (``None``: it does), in words that name the flags seen.

    CPU: one of the flags avx512_bf16 / amx_bf16 (x86) or bf16 (ARM) in /proc/cpuinfo; without /proc/cpuinfo,
    torch's probes (``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``). CUDA:
    ``torch.cuda.is_bf16_supported()`` (Ampere and later)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "torch sees no GPU"
        if torch.cuda.is_bf16_supported():
            return None
        return f"the GPU {torch.cuda.get_device_name(device)} has no bf16 support"
    if device.type != "cpu":
        return f"bf16 support on {device.type!r} devices is not checked by b2lib"
    flags = cpu_flags()
    if flags is None:
        if _torch_probe("_is_avx512_bf16_supported") or _torch_probe("_is_amx_tile_supported"):
            return None
        return "this one has neither (no /proc/cpuinfo, and torch's AVX512-BF16 and AMX probes say no)"
    if any(f in flags for f in X86_BF16_FLAGS + ARM_BF16_FLAGS):
        return None
    info = _proc_cpuinfo()
    model = f", {info[0]}" if info and info[0] else ""
    avx512 = "avx512f" if "avx512f" in flags else "no avx512f"
    return f"this one{model} has neither: its flags lack {' and '.join(X86_BF16_FLAGS)} ({avx512})"


def default_device() -> str:
    """The device a config that names none will run on: the GPU when torch sees one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_dtype(dtype: str, device: torch.device | str | None = None) -> None:
    """Raise a ``ValueError`` that names the fix if ``dtype`` is unknown, or is ``"bf16"`` on a ``device`` (default:
    :func:`default_device`) without native bf16. Called where a config is validated (``TrainerConfig``,
    ``RunConfig``) and again by the trainer for the device it actually got."""
    _check_name(dtype)
    if dtype != "bf16":
        return
    device = device if device is not None else default_device()
    why = bf16_problem(device)
    if why is not None:
        raise ValueError(
            f"dtype='bf16' needs a CPU with AVX512-BF16 or AMX ({why}) or a GPU with bf16 (device {str(device)!r}); "
            "use dtype='fp32'."
        )
