from dataclasses import dataclass
from typing import ClassVar

import torch

from ...engine import Params, predict
from ...errors import UnlearnkitError
from .base import LM_REGISTRY, LMContext, LMLoopParams, register


@dataclass(frozen=True)
class RMUParams(LMLoopParams):
    layer: int = 1              # steer the residual stream output by this block (1-based; WMDP's layer_id 7 = 8 here)
    steering: float = 4.0       # c, in units of the original model's mean activation norm at that layer
    alpha: float = 1.0          # retain weight, chosen on tofu-synth-gpt (docstring); WMDP's is 100, OpenUnlearning's 1000
    lr: float = 1e-2
    update_blocks: int = 3      # update the MLP output weights of this many blocks ending at `layer`
    lora: ClassVar[bool] = False  # its localisation is the update mask on those blocks' MLP outputs

    search_space: ClassVar[dict] = {**LMLoopParams.search_space, "steering": ("log", 0.5, 20.0),
                                    "alpha": ("log", 1.0, 1000.0)}

    def _checks(self):
        return super()._checks() + [("layer", self.layer >= 1, "must be >= 1 (a block's output)"),
                                    ("steering", self.steering > 0, "must be > 0"),
                                    ("alpha", self.alpha >= 0, "must be >= 0"),
                                    ("update_blocks", self.update_blocks >= 1, "must be >= 1")]

    def check_setting(self, task, data, forget, seed) -> None:
        if self.layer > data.config.n_layer:
            raise UnlearnkitError(f"rmu.layer={self.layer}, but the model has {data.config.n_layer} blocks; use 1 to "
                                  f"{data.config.n_layer}")


def rmu_update_mask(params: Params, layer: int, blocks: int) -> Params:
    """1 on the MLP output projections (GPT-2's `mlp.c_proj.weight`, Llama/Mistral's `mlp.down_proj.weight`)
    of blocks layer−blocks … layer−1 (0-based), 0 elsewhere."""
    wanted = {f".{b}.mlp.{proj}.weight" for b in range(max(0, layer - blocks), layer) for proj in ("c_proj", "down_proj")}
    chosen = {k for k in params if any(k.endswith(w) for w in wanted)}
    if len(chosen) < min(blocks, layer):
        raise UnlearnkitError(f"RMU: found {len(chosen)} MLP output projections for blocks "
                              f"{max(0, layer - blocks)}…{layer - 1}; is layer={layer} beyond the model's blocks?")
    return {k: torch.full((1,) * v.dim(), float(k in chosen)) for k, v in params.items()}


@register("rmu", RMUParams, LM_REGISTRY)
def rmu(ctx: LMContext, hp: RMUParams) -> Params:
    """RMU: push layer-ℓ activations on S_F towards a random direction, keep them on S_R; few weights move.

    Li et al. 2024, "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning"
    (arXiv 2403.03218), §5, Eq. 1–3: L = mean_t ‖h_θ(x_f)_t − c·u‖² + α·mean_t ‖h_θ(x_r)_t − h_orig(x_r)_t‖²,
    the squared errors averaged over tokens and hidden units (`F.mse_loss`, as the WMDP code), u a fixed
    random unit vector with U[0, 1) entries (one per model), and only the MLP output weights of the
    blocks up to ℓ updated (WMDP: `down_proj` of layers 5–7 for layer 7). Tokens: every non-padding token
    of question and answer (WMDP scores whole texts). Deviation: c is set per model relative to its
    mean activation norm on S_F (WMDP's 6.5–20 are absolute values for Zephyr-7B's scale). On
    tofu-synth-gpt, α = 100 kept the forget answers' probability unchanged (0.88 → 0.88); α = 1 with
    lr 1e-2 lowers it to 0.06 (at a utility cost), so those are the defaults here.
    """
    pad = ctx.pad_id
    x_forget = ctx.train_data[0][torch.as_tensor(ctx.forget)]
    with torch.no_grad():
        h = predict(lambda p, x: ctx.forward.hidden(p, x, hp.layer), ctx.originals, x_forget,  # (N, n, L, d)
                    chunk=len(x_forget))
        norms = h.norm(dim=-1)[:, x_forget != pad].mean(1)
        gens = [torch.Generator().manual_seed(int(s) + 0x5A17) for s in ctx.seeds]
        u = torch.stack([torch.rand(h.shape[-1], generator=g) for g in gens])
        control = u / u.norm(dim=-1, keepdim=True) * (hp.steering * norms)[:, None]

    def masked_mse(h: torch.Tensor, target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        keep = (x != pad).to(h.dtype)
        return (((h - target) ** 2).mean(-1) * keep).sum() / keep.sum().clamp(min=1)

    def loss(params, batch, frozen):
        (xf, _, _), (xr, _, _) = batch["forget"], batch["retain"]
        forget = masked_mse(ctx.forward.hidden(params, xf, hp.layer), frozen["control"], xf)
        target = ctx.forward.hidden(frozen["reference"], xr, hp.layer).detach()
        return forget + hp.alpha * masked_mse(ctx.forward.hidden(params, xr, hp.layer), target, xr)

    return ctx.fit(loss, ctx.pair_streams(hp), hp.epochs, hp.optim(),
                   frozen={"reference": ctx.originals, "control": control},
                   update_mask=rmu_update_mask(ctx.originals, hp.layer, hp.update_blocks), desc="rmu")
