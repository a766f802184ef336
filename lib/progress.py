"""Progress bars (tqdm) for long work: the batches of an epoch, and the bar behind the
`progress(done, total)` callbacks that lib's long functions take."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from tqdm import tqdm


def batches(start: int, stop: int, desc: str) -> tqdm:
    """A bar over batches `start..stop-1` (a resumed epoch starts part-way)."""
    return tqdm(range(start, stop), desc=desc, unit="batch")


@contextlib.contextmanager
def callback(desc: str, unit: str) -> Iterator[Callable[[int, int], None]]:
    """A transient bar and the `show(done, total)` callback that moves it.

    For lib functions that report their progress through a callback
    (`frames.build_cache`, `latents.encode_split`); the bar leaves no line behind.
    """
    with tqdm(total=0, desc=desc, unit=unit, leave=False) as bar:

        def show(done: int, total: int) -> None:
            bar.total, bar.n = total, done
            bar.refresh()

        yield show
