"""Rich progress for the task build: one line per stage, with the loss while a model trains."""

from __future__ import annotations

import contextlib
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
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=console or Console(stderr=True),
            disable=not show,
        )

    def __enter__(self) -> BuildProgress:
        self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[OnStep]:
        task = self._progress.add_task(STAGES[name], total=total or 1, info="")
        every = max(1, (total or 1) // 50)

        def on_step(step: int, loss: float) -> None:
            if (step + 1) % every == 0 or step + 1 == total:
                self._progress.update(task, completed=step + 1, info=f"loss {loss:.3f}")

        yield on_step if self.show else _ignore
        self._progress.update(task, completed=total or 1)
