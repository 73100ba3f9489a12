"""Timing arithmetic: repeated and interleaved timings, their rates and ratios, UNet forward time by hooks."""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

__all__ = [
    "Timing",
    "time_it",
    "time_pair",
    "paired_ratio",
    "ratio_of_medians",
    "spread",
    "UnetTimer",
    "machine_info",
    "save_json",
    "sync",
]


@dataclass
class Timing:
    """Seconds of ``repeats`` timed runs (after ``warmup`` untimed ones)."""

    seconds: list[float]
    work: float = 1.0  # units of work per run (images, trajectories, ...): rates are work / seconds

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def rate(self) -> dict[str, float]:
        """min/median/max of work per second (min rate = slowest run)."""
        rates = sorted(self.work / s for s in self.seconds)
        return {"min": rates[0], "median": statistics.median(rates), "max": rates[-1]}

    def summary(self) -> dict:
        return {"seconds": self.seconds, "work": self.work, "rate": self.rate()}


def sync(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def time_it(
    fn: Callable[[int], object], repeats: int = 5, warmup: int = 1, work: float = 1.0, desc: str | None = None
) -> Timing:
    """Time ``fn(r)`` (``r`` = repeat index, e.g. a seed) ``repeats`` times after ``warmup`` calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    for w in range(warmup):
        fn(-1 - w)
    seconds = []
    for r in tqdm(range(repeats), desc=desc, leave=False, disable=desc is None):
        sync()
        t = time.perf_counter()
        fn(r)
        sync()
        seconds.append(time.perf_counter() - t)
    return Timing(seconds, work)


def time_pair(
    fa: Callable[[int], object],
    fb: Callable[[int], object],
    repeats: int = 5,
    warmup: int = 1,
    work: float = 1.0,
    desc: str | None = None,
) -> tuple[Timing, Timing]:
    """Time two callables with their repeats interleaved (A B, B A, A B, ...), so that a drift of the machine's speed
    during the measurement (other tenants, clock changes) lands on both columns instead of biasing their ratio.
    Read the pair with :func:`paired_ratio`."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    for w in range(warmup):
        fa(-1 - w)
        fb(-1 - w)
    seconds: dict[str, list[float]] = {"a": [], "b": []}
    for r in tqdm(range(repeats), desc=desc, leave=False, disable=desc is None):
        for key in "ab" if r % 2 == 0 else "ba":
            fn = fa if key == "a" else fb
            sync()
            t = time.perf_counter()
            fn(r)
            sync()
            seconds[key].append(time.perf_counter() - t)
    return Timing(seconds["a"], work), Timing(seconds["b"], work)


def paired_ratio(a: Timing, b: Timing) -> dict[str, float]:
    """Rate of ``a`` over rate of ``b`` repeat by repeat (runs timed back to back by :func:`time_pair`):
    min/median/max of the per-repeat ratios."""
    if len(a.seconds) != len(b.seconds):
        raise ValueError(f"paired timings need equal repeats, got {len(a.seconds)} and {len(b.seconds)}.")
    return spread([(a.work / sa) / (b.work / sb) for sa, sb in zip(a.seconds, b.seconds)])


def ratio_of_medians(a: Timing, b: Timing) -> dict[str, float]:
    """Rate of ``a`` over rate of ``b``: median of medians, and the extreme pairings as the spread."""
    ra, rb = a.rate(), b.rate()
    return {"median": ra["median"] / rb["median"], "min": ra["min"] / rb["max"], "max": ra["max"] / rb["min"]}


class UnetTimer:
    """Wall time spent inside a module's ``forward`` (hooks; CUDA-synchronised on GPU), to say what share of a loop is
    the network and what is Python and glue around it. ``training_seconds`` / ``eval_seconds`` split it by the module's
    mode at the call: the trainer's update runs the UNet in train mode and sampling in eval mode, so one timer over a
    whole stage tells the two phases apart without touching the trainer."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet
        self.seconds = 0.0
        self.training_seconds = 0.0
        self.calls = 0
        self._t0 = 0.0
        self._handles: list = []

    @property
    def eval_seconds(self) -> float:
        return self.seconds - self.training_seconds

    def reset(self) -> None:
        self.seconds = self.training_seconds = 0.0

    def _pre(self, module, args, kwargs=None):
        sync()
        self._t0 = time.perf_counter()

    def _post(self, module, args, output):
        sync()
        dt = time.perf_counter() - self._t0
        self.seconds += dt
        if module.training:
            self.training_seconds += dt
        self.calls += 1

    def __enter__(self) -> "UnetTimer":
        self._handles = [self.unet.register_forward_pre_hook(self._pre), self.unet.register_forward_hook(self._post)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def machine_info() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        import os

        info["cpu_count"] = os.cpu_count()
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def save_json(obj: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str))
    return path
