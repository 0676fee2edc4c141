"""Progress of a long loop: a tqdm bar on a terminal, plain lines on stderr everywhere else.

A bar redraws in place and is unreadable in a log file or CI output, so tqdm turns itself off there —
which left a run that trains for an hour silent for an hour. Off a terminal, `steps` prints one line
when a loop starts, then one every `EVERY` seconds (done, elapsed, an estimate of what is left).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator

from tqdm.auto import tqdm

EVERY = 30.0  # seconds between progress lines off a terminal


def steps(first: int, total: int, desc: str | None) -> Iterator[int]:
    """range(first, total), reporting progress under `desc` (silent when desc is None or empty)."""
    if not desc:
        yield from range(first, total)
    elif sys.stderr.isatty():
        yield from tqdm(range(first, total), desc=desc, initial=first, total=total, leave=False)
    else:
        yield from _lines(first, total, desc)


def _lines(first: int, total: int, desc: str) -> Iterator[int]:
    print(f"{desc}: {total - first} steps" + (f" (resuming at step {first})" if first else ""),
          file=sys.stderr, flush=True)
    start = last = time.monotonic()
    for step in range(first, total):
        yield step
        now = time.monotonic()
        if now - last >= EVERY and step + 1 < total:
            last, done = now, step + 1 - first
            left = (now - start) / done * (total - step - 1)
            print(f"{desc}: step {step + 1}/{total} ({100 * (step + 1) / total:.0f}%), {now - start:.0f} s, "
                  f"about {left:.0f} s left", file=sys.stderr, flush=True)
