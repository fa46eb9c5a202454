"""Progress display for long commands: rich bars on stderr when it is a terminal (or with --progress),
nothing otherwise, so piped and --json output stays clean."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

stderr = Console(stderr=True, highlight=False)


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress", action="store_true", help="show progress bars even when stderr is not a terminal"
    )


def wanted(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "progress", False)) or sys.stderr.isatty()


class _BytesColumn(ProgressColumn):
    """Bytes done / total, only on byte-count tasks."""

    def render(self, task: Task) -> Text:
        return DownloadColumn().render(task) if task.fields.get("bytes") else Text("")


class Steps:
    """Named steps of a command, each with a spinner while it runs and a tick when done; byte-count bars
    for transfers. A no-op when progress is not wanted."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    @contextmanager
    def step(self, description: str) -> Iterator[None]:
        if self.progress is None:
            yield
            return
        task = self.progress.add_task(description, total=1)
        yield
        self.progress.update(task, completed=1, description=f"[green]✔[/] {description}")

    @asynccontextmanager
    async def transfer(
        self, description: str, total: int | None, read: Callable[[], int]
    ) -> AsyncIterator[None]:
        """A bar of `read()` bytes out of `total`, refreshed ten times a second while the body awaits."""
        if self.progress is None:
            yield
            return
        progress = self.progress
        task = progress.add_task(description, total=total, bytes=True)

        async def tick() -> None:
            while True:
                progress.update(task, completed=read())
                await asyncio.sleep(0.1)

        ticker = asyncio.create_task(tick())
        try:
            yield
        finally:
            ticker.cancel()
            done = read()
            progress.update(
                task, completed=done, total=total or done, description=f"[green]✔[/] {description}"
            )


@contextmanager
def steps(args: argparse.Namespace) -> Iterator[Steps]:
    if not wanted(args):
        yield Steps(None)
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        _BytesColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr) as progress:
        yield Steps(progress)
