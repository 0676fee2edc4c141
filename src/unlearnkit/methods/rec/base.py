"""What recommendation methods share: Adam at the rec-mf recipe's weight decay, which is BPR's
regulariser λ‖Θ‖² (Rendle et al. 2009, eq. 3; coupled weight decay adds λθ to every gradient)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..base import LoopParams


@dataclass(frozen=True)
class BPRLoopParams(LoopParams):
    epochs: float = 5.0
    lr: float = 1e-3
    batch_size: int = 256
    optimizer: str = "adam"
    weight_decay: float = 1e-4

    search_space: ClassVar[dict[str, tuple]] = {"lr": ("log", 1e-4, 3e-2), "epochs": ("float", 1.0, 20.0)}
