"""A long run's progress as short lines on stderr, for where tqdm bars cannot be seen.

Why a module of its own: the run loop (:mod:`b2lib.experiments.experiment`) only calls it; what a line says, how often,
and where it goes (stderr, ``tqdm.write`` beside a terminal's bars) is this module's one job.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Callable, Iterator

__all__ = ["RunProgress", "PROGRESS_EVERY_S", "clock", "terminal"]

#: seconds between two training-progress lines of one model (its first and last stage are always reported): a
#: 15-minute run then prints a few dozen lines, which papermill streams and the executed notebook keeps compact
PROGRESS_EVERY_S = 30.0


def clock(seconds: float) -> str:
    """``754.2`` -> ``"12m34s"`` (``"1h02m"`` past an hour): short enough for a progress line."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def terminal() -> bool:
    """Whether stderr is a terminal, where tqdm bars redraw in place. Elsewhere (a notebook kernel, papermill, a log
    file) a bar is either a widget that papermill cannot stream or a pile of carriage-return frames."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


class RunProgress:
    """A long run's progress as short lines on stderr: a model's training start, one line per stage at most every
    ``every_s`` seconds (stage k/K, reward, elapsed, ETA), each evaluation's start and end, and the run's end.

    Why lines: in a notebook kernel tqdm draws widgets, which ``papermill --log-output`` cannot stream (it logs an
    output when it is created; a widget's redraws are not outputs) and which pile up in the executed notebook (the
    trainer opens bars per stage). Plain lines stream, and a rate limit keeps the notebook's output to a few dozen
    lines. On a terminal (``bars``) the trainer's tqdm bars show the stages, so only the other lines are printed,
    through ``tqdm.write`` so they do not break a bar."""

    def __init__(self, enabled: bool = True, every_s: float | None = None, bars: bool = False) -> None:
        self.enabled = enabled
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
        self.bars = bars

    def say(self, text: str) -> None:
        """One line on stderr (looked up at each call, so a redirected or captured stream gets it), flushed at once."""
        if not self.enabled:
            return
        if self.bars:
            from tqdm.auto import tqdm

            tqdm.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def training(self, label: str, total: int, start: int = 0) -> Callable[[dict], None]:
        """Announce ``label``'s training of ``total`` stages (``start`` of them done in a checkpoint) and return the
        trainer's per-stage callback (``RLTrainer.train(on_stage=...)``). The ETA is this process's mean stage time
        times the stages left, so a resumed run does not count the stages it skipped."""
        if start >= total:
            self.say(f"{label}: all {total} stages done (checkpoint); exporting and evaluating")
        elif start:
            self.say(f"{label}: resuming at stage {start + 1}/{total} from its checkpoint")
        else:
            self.say(f"{label}: training {total} stages")
        t0, last = time.perf_counter(), -math.inf

        def on_stage(metrics: dict) -> None:
            nonlocal last
            done, now = metrics["stage"] + 1, time.perf_counter()
            if self.bars or not (done in (start + 1, total) or now - last >= self.every_s):
                return
            last, elapsed = now, now - t0
            eta = elapsed / max(1, done - start) * (total - done)
            self.say(
                f"{label}: stage {done}/{total} · reward {metrics['reward_mean']:.4f} · {clock(elapsed)} elapsed · "
                f"ETA {clock(eta)}"
            )

        return on_stage

    def evaluation_started(self, label: str, split: str, images: int) -> None:
        """An evaluation of one model on one split begins (it can take minutes: say so before it does)."""
        self.say(f"{label}: evaluating on {split} ({images} images)")

    def evaluation_done(self, label: str, split: str, summary: dict, seconds: float) -> None:
        """An evaluation ended: how long it took and its headline numbers."""
        scores = [f"reward {summary['reward_mean']:.4f}"] if "reward_mean" in summary else []
        if "judge_all_ok" in summary:
            scores.append(f"judge {summary['judge_all_ok']:.3f}")
        if "bertscore_mean" in summary:
            scores.append(f"BERTScore {summary['bertscore_mean']:.4f}")
        self.say(f"{label}: evaluated on {split} in {clock(seconds)}" + (f": {', '.join(scores)}" if scores else ""))

    @contextlib.contextmanager
    def quiet_loading(self) -> Iterator[None]:
        """Model loading without diffusers' and transformers' tqdm bars where bars cannot redraw (not a terminal):
        in a notebook each is a widget output that stays in the executed notebook. Their settings are restored."""
        if self.bars:
            yield
            return
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        was = [(log, log.is_progress_bar_enabled()) for log in (dlog, tlog)]
        for log, _ in was:
            log.disable_progress_bar()
        try:
            yield
        finally:
            for log, enabled in was:
                if enabled:
                    log.enable_progress_bar()
