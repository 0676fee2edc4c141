"""Linear datamodels (Ilyas et al. 2022, "Datamodels: Predicting Predictions from Training Data", ICML,
arXiv 2202.00622): for each target example x, a linear model of its margin under training on a subset S'
of the training set, f(x; S') ≈ b_x + Σ_i w_{x,i}·1[i ∈ S'], fitted on M models trained on random subsets.

Fitted here by ridge regression on centred inclusion masks, for all targets at once (one linear solve, no
loop over examples). With M < n (always, on this machine) the solve is in dual form: W = Xcᵀ·A with
A = (Xc Xcᵀ + λI)⁻¹ Yc, so the n × n_targets weight matrix is never materialised: predictions,
removal effects and principal components are all computed through the two factors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

RIDGE_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0)  # × mean diagonal of Xc Xcᵀ; chosen on held-out models


@dataclass(frozen=True)
class Attribution:
    """Effect of including training example i on target x's margin: weights (n_train, n_targets), bias."""

    weights: torch.Tensor
    bias: torch.Tensor
    method: str

    def predict(self, masks: torch.Tensor) -> torch.Tensor:
        """Predicted margins (K, n_targets) of models trained on the subsets masks (K, n_train) ∈ {0,1}."""
        return masks.float() @ self.weights + self.bias

    def removal_effect(self, positions) -> torch.Tensor:
        """Σ_{i∈F} w_{x,i}: the predicted drop of every target's margin when F is removed."""
        return self.weights[torch.as_tensor(positions)].sum(0)


@dataclass(frozen=True)
class LinearDatamodels(Attribution):
    """Ridge datamodels in factored (dual) form: weights = basis @ coef, basis = Xcᵀ (n_train, M)."""

    basis: torch.Tensor = None
    coef: torch.Tensor = None
    mask_mean: torch.Tensor = None

    def predict(self, masks: torch.Tensor) -> torch.Tensor:
        return ((masks.float() - self.mask_mean) @ self.basis) @ self.coef + self.bias

    def removal_effect(self, positions) -> torch.Tensor:
        return self.basis[torch.as_tensor(positions)].sum(0) @ self.coef

    def target_weights(self, targets) -> torch.Tensor:
        """The explicit weights (n_train, len(targets)) of a few targets."""
        return self.basis @ self.coef[:, torch.as_tensor(targets)]

    def self_influence(self) -> torch.Tensor:
        """w_{i,i} for every training example i (n_train,): the predicted rise of its own margin when it is
        in the training set (targets are the training examples first), from the factors' diagonal."""
        n = self.basis.shape[0]
        return (self.basis * self.coef[:, :n].T).sum(1)

    def principal_projections(self, targets, k: int) -> torch.Tensor:
        """Projections (len(targets), k) of the rows of the datamodel matrix D[x, :] = w_x (x in targets)
        onto its k leading principal components (rows centred), computed from the factors."""
        d_t = self.coef[:, torch.as_tensor(targets)].T.double()            # D = d_t @ basisᵀ
        b = self.basis.double()
        q, r = torch.linalg.qr(b)                                          # basis = Q R
        small = d_t @ r.T                                                  # D = small @ Qᵀ, rows in span(Q)
        small = small - small.mean(0, keepdim=True)
        _, _, vh = torch.linalg.svd(small, full_matrices=False)
        return (small @ vh[:k].T).float()


def fit_datamodels(masks: torch.Tensor, margins: torch.Tensor, ridge: float | None = None) -> LinearDatamodels:
    """Ridge datamodels for all targets at once. masks (M, n_train) 0/1, margins (M, n_targets).

    `ridge` is λ relative to the mean diagonal of Xc Xcᵀ; None picks it from RIDGE_GRID by the LDS of a
    fit on 80% of the models, scored on the other 20%.
    """
    masks, margins = masks.double(), margins.double()
    if masks.dim() != 2 or margins.dim() != 2 or len(masks) != len(margins):
        raise ValueError(f"masks (M, n_train) and margins (M, n_targets) must share M; got {tuple(masks.shape)} "
                         f"and {tuple(margins.shape)}")
    if len(masks) < 5:
        raise ValueError("datamodels need at least 5 subset models")
    if ridge is None:
        cut = int(0.8 * len(masks))
        scores = [lds(fit_datamodels(masks[:cut], margins[:cut], r), masks[cut:], margins[cut:]).mean()
                  for r in RIDGE_GRID]
        ridge = RIDGE_GRID[int(np.nanargmax(scores))]
    mean, bias = masks.mean(0), margins.mean(0)
    xc, yc = masks - mean, margins - bias
    gram = xc @ xc.T
    lam = ridge * gram.diagonal().mean()
    coef = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), yc)
    return LinearDatamodels(weights=None, bias=bias.float(), method="datamodels", basis=xc.T.float().contiguous(),
                            coef=coef.float(), mask_mean=mean.float())


def lds(attribution: Attribution, masks: torch.Tensor, margins: torch.Tensor) -> np.ndarray:
    """Linear datamodeling score per target (Park et al. 2023, TRAK, §2; Ilyas et al. 2022): the Spearman
    correlation, over held-out subsets, between predicted and actual margins. masks (K, n), margins (K, E)."""
    pred = attribution.predict(masks).double().numpy()
    return _spearman_columns(pred, margins.double().numpy())


def _spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(0) / np.sqrt((ra ** 2).sum(0) * (rb ** 2).sum(0))
