"""Metrics: pure functions over arrays of logits and margins."""
from .klom import klom
from .margins import accuracy, margins, mean_cross_entropy
from .summary import SPLITS, bootstrap_p95, summarize

__all__ = ["SPLITS", "accuracy", "bootstrap_p95", "klom", "margins", "mean_cross_entropy", "summarize"]
