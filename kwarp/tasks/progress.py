"""Progress of the task build: a live bar per stage on a terminal; plain, timed lines otherwise (a log,
`make demo | tee`, a CI job), so a build of several minutes is never silent."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

STAGES = {
    "corpus": "Generating reviews, preference pairs and prompts",
    "tokenizer": "Training the tokenizer",
    "sft": "Training the SFT policy",
    "reward": "Training the reward model (Bradley-Terry)",
    "evaluate": "Scoring SFT samples with the reward model",
    "save": "Saving checkpoints and the WarpRun",
}

OnStep = Callable[[int, float], None]


def _ignore(step: int, loss: float) -> None:
    return None


class BuildProgress:
    """`with BuildProgress(show) as bar: with bar.stage("sft", total=N) as on_step: ...`"""

    def __init__(self, show: bool, console: Console | None = None):
        self.show = show
        self._console = console or Console(stderr=True)
        # Not a terminal: rich would draw nothing until the end; print a line per stage and per tenth.
        self.lines = show and not self._console.is_terminal
        self._started = time.monotonic()
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=self._console,
            disable=not show or self.lines,
        )

    def __enter__(self) -> BuildProgress:
        self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def _line(self, text: str) -> None:
        print(f"[task build {time.monotonic() - self._started:6.1f}s] {text}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[OnStep]:
        if self.lines:
            with self._stage_lines(name, total) as on_step:
                yield on_step
            return
        task = self._progress.add_task(STAGES[name], total=total or 1, info="")
        every = max(1, (total or 1) // 50)

        def on_step(step: int, loss: float) -> None:
            if (step + 1) % every == 0 or step + 1 == total:
                self._progress.update(task, completed=step + 1, info=f"loss {loss:.3f}")

        yield on_step if self.show else _ignore
        self._progress.update(task, completed=total or 1)

    @contextlib.contextmanager
    def _stage_lines(self, name: str, total: int | None) -> Iterator[OnStep]:
        start = time.monotonic()
        self._line(f"{STAGES[name]}" + (f" ({total} steps)" if total and total > 1 else ""))
        every = max(1, (total or 1) // 10)

        def on_step(step: int, loss: float) -> None:
            if (step + 1) % every == 0 and step + 1 != total:
                self._line(f"  {name} {step + 1}/{total} loss {loss:.3f}")

        yield on_step
        self._line(f"  {name} done in {time.monotonic() - start:.1f}s")
