"""Matrix factorisation with item content features, trained with BPR: the recommender of rec-mf.

Score ŷ_ui = ⟨p_u, q_i + E f_i⟩ + b_i: a user embedding p_u, an item embedding q_i plus the item's
content features f_i projected into the same space by E, and an item bias. This is VBPR's construction
(He & McAuley 2016, "VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback", eq. 4, with
the visual part sharing the user's vector): the simplest multi-modal recommender, and the base the
MMRec-style models MMRecUn unlearns from build on. Rows are [user, item_1, …, item_W] (see
`data.interactions`); the model returns the W scores (B, W), whatever W is, so the same forward scores
a training row's positive and negatives or a single (user, item) pair when ranking the catalogue.

The item features are a plain attribute (no parameter, no buffer), as resnet9's calibration set is:
functional_call and the engine's meta-device template leave it alone, and it is moved to the scores'
device and dtype on use.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnlearnkitError

INIT_STD = 0.1


class MatrixFactorisation(nn.Module):
    def __init__(self, n_users: int, item_features: torch.Tensor, dim: int):
        super().__init__()
        n_items, n_features = item_features.shape
        self.users = nn.Parameter(torch.randn(n_users, dim) * INIT_STD)
        self.items = nn.Parameter(torch.randn(n_items, dim) * INIT_STD)
        self.project = nn.Linear(n_features, dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(n_items))
        self.item_features = item_features.detach().to("cpu", torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        user, items = x[:, 0], x[:, 1:]
        features = self.item_features.to(x.device, self.items.dtype)
        vectors = F.embedding(items, self.items) + self.project(F.embedding(items, features))
        return (F.embedding(user, self.users).unsqueeze(1) * vectors).sum(-1) + F.embedding(items, self.bias[:, None])[..., 0]


def mf(input_shape: tuple[int, ...], num_classes: int, n_users: int | None = None,
       item_features: torch.Tensor | None = None, dim: int = 32) -> nn.Module:
    """A model of `data.interactions.Interactions` rows (num_classes = the positive and its negatives)."""
    if n_users is None or item_features is None:
        raise UnlearnkitError("the mf model needs interaction data (a recommendation task such as rec-mf): its "
                              "users and item features come from the dataset")
    if tuple(input_shape) != (num_classes + 1,):
        raise UnlearnkitError(f"mf rows are [user, item, negatives]: expected inputs of shape ({num_classes + 1},), "
                              f"got {tuple(input_shape)}")
    if dim < 1:
        raise UnlearnkitError(f"mf: dim must be >= 1, got {dim}")
    return MatrixFactorisation(n_users, item_features, dim)


def bpr_loss(scores: torch.Tensor) -> torch.Tensor:
    """BPR (Rendle et al. 2009, eq. 3, without its λ‖Θ‖², which the optimizer's weight decay adds):
    mean over rows and negatives of −ln σ(ŷ_ui − ŷ_uj), scores (B, 1 + K) with the positive first."""
    return F.softplus(scores[:, 1:] - scores[:, :1]).mean()
