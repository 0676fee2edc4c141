"""Metrics: pure functions over arrays of logits, margins and (recommenders') scores."""
from .klom import klom
from .margins import accuracy, margins, mean_cross_entropy
from .ranking import recall_ndcg_at_k
from .summary import SPLITS, bootstrap_p95, summarize

__all__ = ["SPLITS", "accuracy", "bootstrap_p95", "klom", "margins", "mean_cross_entropy", "recall_ndcg_at_k",
           "summarize"]
