from dataclasses import dataclass
from typing import ClassVar

import torch

from ...engine import Params
from ...errors import UnlearnkitError
from ...lm.sae import (
    KINDS,
    SCORES,
    clamp_values,
    feature_scores,
    residual_acts,
    sae_entries,
    top_features,
    train_sae,
)
from ..base import HParams
from .base import LM_REGISTRY, LMContext, register


@dataclass(frozen=True)
class SAEClampParams(HParams):
    layer: int = 1            # the block whose output (residual stream) the SAE reads and edits (1-based)
    width_mult: int = 4       # dictionary size m = width_mult × d (the issue: 4–8×)
    kind: str = "topk"        # "topk" (Gao et al. 2024) or "relu" (ReLU + L1, Bricken et al. 2023)
    k: int = 8                # TopK's active features per token
    l1: float = 2.0           # ReLU's L1 coefficient (inputs scaled to E‖x‖² = d)
    steps: int = 1000         # Adam steps of the SAE
    lr: float = 2e-3
    batch_size: int = 256     # tokens per SAE step
    score: str = "ratio"      # feature score, `lm.sae.feature_scores`
    n_features: int = 8       # features clamped per model
    clamp: float = 1.5        # an active chosen feature is set to −clamp × its typical forget activation

    search_space: ClassVar[dict] = {"n_features": ("int", 1, 32), "clamp": ("log", 0.5, 30.0)}

    def _checks(self):
        return [("layer", self.layer >= 1, "must be >= 1 (a block's output)"),
                ("width_mult", self.width_mult >= 1, "must be >= 1 (the issue asks 4 to 8)"),
                ("kind", self.kind in KINDS, f"must be one of {', '.join(KINDS)}"),
                ("k", self.k >= 1, "must be >= 1"),
                ("l1", self.l1 >= 0, "must be >= 0"),
                ("steps", self.steps >= 1, "must be >= 1"),
                ("lr", self.lr > 0, "must be > 0"),
                ("batch_size", self.batch_size >= 1, "must be >= 1"),
                ("score", self.score in SCORES, f"must be one of {', '.join(SCORES)}"),
                ("n_features", self.n_features >= 1, "must be >= 1"),
                ("clamp", self.clamp >= 0, "must be >= 0 (0 zero-ablates, which Farrell et al. found ineffective)")]

    def check_setting(self, task, data, forget, seed) -> None:
        n, d = data.config.n_layer, data.config.n_embd
        if self.layer > n:
            raise UnlearnkitError(f"sae-clamp.layer={self.layer}, but the model has {n} blocks; use 1 to {n}")
        if self.kind == "topk" and self.k > self.width_mult * d:
            raise UnlearnkitError(f"sae-clamp.k={self.k} exceeds the dictionary's {self.width_mult * d} features")


@register("sae-clamp", SAEClampParams, LM_REGISTRY)
def sae_clamp(ctx: LMContext, hp: SAEClampParams) -> Params:
    """SAE concept unlearning: clamp the forget set's SAE features at inference; no weight changes.

    A SAUCE analogue (arXiv 2503.14530, for VLMs) with Farrell, Lau & Conmy 2024's
    conditional negative clamp (arXiv 2410.19278): per original model, an SAE (`lm.sae.train_sae`) on block
    `layer`'s output at every real token of the training items; features scored by their activation on the
    forget items' tokens against the retained items' (`feature_scores`); the top `n_features` set, wherever
    they fire, to −clamp × their mean forget activation, the SAE's reconstruction error kept
    (`lm.sae.ClampedForward`). Defaults (TopK k = 8, 4× dictionary, 8 features, clamp 1.5) from a small sweep on
    tofu-synth-tiny (authors:0.1, N = 2): forget answers' probability 0.78 → 0.28, retained authors' 0.77 → 0.67.

    Returns the originals' parameters unchanged plus the stacked `sae.*` entries (`lm.sae.sae_entries`):
    scored through `ClampedForward.from_params(forward, params)`, they are the clamped models; through a
    plain LMForward (the `sae.*` entries dropped) the originals.
    """
    x = ctx.train_data[0]
    call = lambda rows: residual_acts(ctx.forward, ctx.originals, x[torch.as_tensor(rows)], hp.layer, ctx.pad_id)
    acts = residual_acts(ctx.forward, ctx.originals, x, hp.layer, ctx.pad_id)
    k = hp.k if hp.kind == "topk" else 0
    sae = train_sae(acts, hp.width_mult, hp.kind, hp.l1, hp.k, hp.steps, hp.lr, hp.batch_size,
                    seed=[int(s) + 0x5AE for s in ctx.seeds])
    forget, retain = call(ctx.forget), call(ctx.retain)
    mask = top_features(feature_scores(sae, forget, retain, k, hp.score), hp.n_features)
    clamp = clamp_values(sae, forget, mask, hp.clamp, k)
    return {**ctx.originals, **sae_entries(sae, mask, clamp, hp.layer, k)}
