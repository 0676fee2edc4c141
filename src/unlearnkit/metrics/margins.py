"""Margins and accuracies from logits (pure functions over arrays)."""
from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import Diverged


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """φ(x, y) = logit_y − logsumexp_{j≠y} logit_j, for logits (models, examples, classes) → (models, examples).

    The margin of Georgiev et al. 2024 (arXiv 2410.23232, appendix E.1), equal to the log-odds
    log p_y − log(1 − p_y) of the softmax probability of the correct class.
    """
    logits, labels = logits_and_labels(logits, labels)
    correct = logits.gather(2, labels.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(2)
    others = logits.scatter(2, labels.view(1, -1, 1).expand(logits.shape[0], -1, 1), float("-inf"))
    return correct - others.logsumexp(dim=2)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-model accuracy, logits (models, examples, classes) → (models,)."""
    logits, labels = logits_and_labels(logits, labels, min_examples=1)
    return (logits.argmax(dim=2) == labels.view(1, -1)).double().mean(dim=1)


def mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-model mean cross-entropy, logits (models, examples, classes) → (models,)."""
    logits, labels = logits_and_labels(logits, labels, min_examples=1)
    return F.cross_entropy(logits.transpose(1, 2), labels.expand(len(logits), -1), reduction="none").mean(dim=1)


def logits_and_labels(logits, labels, min_examples: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (models, examples, classes) and integer labels (examples,) in range, as tensors (arrays are
    taken too), or a ValueError that says which is wrong: what every function of logits checks first.
    NaN logits raise `Diverged` (naming the models): they come from weights a method left non-finite, and
    wherever they are met (a trajectory's recorder, a method's own measurement) that method's row is
    diverged, the run goes on."""
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    if logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"logits must be floats of shape (models, examples, classes), got {logits.dtype} of "
                         f"shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[1:2]:
        raise ValueError(f"labels must be ({logits.shape[1]},), one per example, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer classes, got {labels.dtype}")
    labels = labels.to(torch.long)
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[2]):
        raise ValueError(f"labels must lie in [0, {logits.shape[2]}), got {int(labels.min())}…{int(labels.max())}")
    if logits.shape[1] < min_examples:
        raise ValueError("logits cover no examples")
    if (bad := torch.isnan(logits).flatten(1).any(1).nonzero().flatten().tolist()):  # weights a step left NaN:
        raise Diverged(-1, bad, f"logits contain NaN in model(s) {bad[:8]}")  # a method's row is diverged
    return logits, labels


def check_options(who: str, rules) -> None:
    """A ValueError naming the first option that breaks its rule; `rules`: (name, value, ok, what it must be)."""
    for name, value, ok, rule in rules:
        if not ok:
            raise ValueError(f"{who}: {name} must be {rule}, got {value!r}")


def whole(value) -> bool:
    """A whole number >= 1 (a count of bins, replicates, examples)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def as_model_array(a, name: str, what: str = "margins", min_examples: int = 1) -> np.ndarray:
    """`a` (a tensor or array of one score per model and example) as a finite float64 (models, examples)
    array, or a ValueError that names it: what every per-example metric checks first."""
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} {what} must be (models, examples), got shape {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.float64)
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} {what} must be numeric, got dtype {a.dtype}")
    if a.shape[1] < min_examples:
        raise ValueError(f"{name} {what} cover no examples")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} {what} contain NaN or inf")
    return a.astype(np.float64)


def model_pair(a, b, names: tuple[str, str], who: str, min_models: int = 2, why: str = "",
               min_examples: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Two arms' margins over the same examples (`as_model_array` each), with at least `min_models` models
    per arm for the metric `who` (`why` says why, in the message)."""
    x, y = (as_model_array(v, n, min_examples=min_examples) for v, n in zip((a, b), names))
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} margins cover {x.shape[1]} and {y.shape[1]} examples")
    if x.shape[0] < min_models or y.shape[0] < min_models:
        raise ValueError(f"{who} needs at least {min_models} models per arm{why}, got {x.shape[0]} {names[0]} and "
                         f"{y.shape[0]} {names[1]}")
    return x, y
