"""What a run shows and records: a rich progress bar (tokens/s, ETA, each loss term) and
`metrics.jsonl` in the run directory, one JSON object per step or validation, written by the
main process. TensorBoard scalars too, when asked for and installed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from surgery.errors import SurgeryError
from surgery.outputs import METRICS


class Reporter:
    def __init__(self, run_dir: Path, steps: int, start: int, *, resumed: bool, enabled: bool, bar: bool,
                 tensorboard: bool = False):
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.path = run_dir / METRICS
        self.progress = None
        self.writer = None
        self._last = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        _drop_after(self.path, start if resumed else -1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise SurgeryError("--tensorboard needs the `tensorboard` package",
                                   hint="pip install tensorboard") from None
            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if bar:
            self.progress = Progress(TextColumn("distill"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                     TextColumn("{task.fields[terms]}"), console=self.console)
            self.task = self.progress.add_task("distill", total=steps, completed=start, rate="", terms="")
            self.progress.start()

    def _record(self, record: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            tag = record.get("split", "train")
            for key, value in record.items():
                if isinstance(value, float):
                    self.writer.add_scalar(f"{tag}/{key}", value, record["step"])

    def step(self, step: int, tokens: int, metrics: dict, step_tokens: int, at: float | None = None) -> None:
        """`at`: the perf_counter time the step ended, when it is reported later (default: now)."""
        if not self.enabled:
            return
        now = time.perf_counter() if at is None else at
        rate = step_tokens / (now - self._last) if self._last is not None else 0.0
        self._last = now
        self._record({"step": step, "tokens": tokens, **metrics, "tokens_per_s": round(rate, 1), "time": time.time()})
        if self.progress is not None:
            terms = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k not in ("lr", "grad_norm"))
            self.progress.update(self.task, completed=step, rate=f"{rate / 1e3:.1f}k tok/s" if rate else "",
                                 terms=terms)

    def validation(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self._record({"step": step, "split": "validation", **metrics, "time": time.time()})
        self.say(f"step {step}: validation " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def say(self, text: str) -> None:
        if self.enabled:
            (self.progress.console if self.progress is not None else self.console).print(text, highlight=False)

    def pause(self) -> None:
        """Forget the last step time (after a checkpoint or validation), so tokens/s measures training."""
        self._last = None

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()


def _drop_after(path: Path, step: int) -> None:
    """Forget the training records of steps after `step` (all of them for -1, a fresh start):
    they are about to be redone. Lines without a step (other stages' events) stay."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", step) <= step]
    if len(kept) != len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
