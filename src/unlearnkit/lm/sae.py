"""Sparse autoencoders on one block's residual stream, and a forward pass that clamps their features.

SAE concept unlearning (a SAUCE analogue: "SAUCE: Selective Concept Unlearning in Vision-Language Models
with Sparse Autoencoders", ICCV 2025, arXiv 2503.14530; for language models Farrell, Lau & Conmy 2024,
"Applying sparse autoencoders to unlearn knowledge in language models", arXiv 2410.19278): train an SAE
on the activations one block writes to the residual stream, find the features that fire on the forget
items rather than on the retained ones, and at inference push those features to a negative value
wherever they fire. No weight of the language model changes.

The SAE (one per model of the ensemble, trained together as stacked tensors):

    f(x) = σ((x − b_dec) W_enc + b_enc),   x̂ = f W_dec + b_dec,   ‖W_dec[i]‖ = 1 for every feature i

- σ = ReLU with an L1 penalty: loss ‖x − x̂‖² + λ Σ_i f_i, the decoder rows held at unit norm (Bricken
  et al. 2023, "Towards Monosemanticity"), on inputs scaled so that E‖x‖² = d (Anthropic's April 2024
  update, whose λ ≈ 5 is on that scale; λ = 2 here: at 5 the tiny models' SAEs explain < 50%), or
- σ = TopK: keep the k largest pre-activations, ReLU'd (Gao et al. 2024, "Scaling and evaluating sparse
  autoencoders": loss ‖x − x̂‖² alone, the sparsity fixed by k; their AuxK loss is left out, so dead
  latents are counted, `SAEStats.dead`, not revived).

Both: b_dec initialised at the geometric median of the activations and subtracted before the encoder
(Bricken et al.), decoder rows unit-norm (renormalised after every Adam step, the gradient's component
along each row removed before it, Bricken et al.), the encoder initialised as the decoder's transpose
(Gao et al.; Conerly et al., April 2024). Inputs are scaled per model by s so that E‖s·x‖² = d while
training; afterwards b_enc and b_dec are divided by s (ReLU and TopK are positively homogeneous, so the
features come out divided by s too), and the returned SAE reads the raw residual stream, its features are
in raw units and W_enc, W_dec are unchanged (W_dec unit-norm).

Clamping keeps the SAE's reconstruction error (Marks et al. 2024's "error term"): block `layer`'s output h
becomes h + (f_clamped − f) W_dec, not x̂(f_clamped), so a forward with no feature clamped is exactly the
original one, and the SAE's imperfect reconstruction never reaches the model.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ..engine import EpochStream, Forward, Optim, Params, fit, predict
from ..engine.compute import current
from ..errors import UnlearnkitError
from .model import LMForward, split_prefixed

PREFIX = "sae."          # reserved key prefix of the SAE tensors in a params dict (see ClampedForward)
SAE_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")
KINDS = ("relu", "topk")
SCORES = ("ratio", "mean", "freq")
SAE_STREAM = 0x5AE  # the batch stream's tag: its batches differ from a zoo's of the same seeds


def split_sae(params: Params) -> tuple[Params, Params]:
    """(the language model's params, the `sae.*` entries without their prefix)."""
    lm, sae = split_prefixed(params, PREFIX)
    return lm, {k[len(PREFIX):]: v for k, v in sae.items()}


# --- the SAE -----------------------------------------------------------------------------------------

def encode(sae: Params, h: torch.Tensor, k: int = 0) -> torch.Tensor:
    """Feature activations f (..., m) of residual-stream vectors h (..., d); k > 0: TopK, else ReLU.
    `sae` is one model's (vmapped) or stacked with h (N, ..., d) (batched over the leading dim)."""
    w, b, b_dec = sae["W_enc"], sae["b_enc"], sae["b_dec"]
    if w.dim() == 3:  # stacked: (N, d, m) with h (N, T, d)
        pre = torch.einsum("ntd,ndm->ntm", h - b_dec[:, None], w) + b[:, None]
    else:
        pre = (h - b_dec) @ w + b
    if k <= 0:
        return torch.relu(pre)
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))


def decode(sae: Params, f: torch.Tensor) -> torch.Tensor:
    w, b_dec = sae["W_dec"], sae["b_dec"]
    if w.dim() == 3:
        return torch.einsum("ntm,nmd->ntd", f, w) + b_dec[:, None]
    return f @ w + b_dec


def _geometric_median(x: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """Weiszfeld's iterations, per model: x (N, T, d) -> (N, d)."""
    y = x.mean(1)
    for _ in range(iters):
        w = 1 / (x - y[:, None]).norm(dim=-1).clamp(min=1e-8)
        y = (w[..., None] * x).sum(1) / w.sum(1, keepdim=True)
    return y


def _model_seeds(seed: int | Sequence[int], n: int) -> list[int]:
    if isinstance(seed, int):
        return [seed * 1_000_003 + i for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise UnlearnkitError(f"train_sae: {len(seeds)} seeds for {n} models")
    return seeds


def train_sae(acts: torch.Tensor, width_mult: int = 4, kind: str = "topk", l1: float = 2.0, k: int = 8,
              steps: int = 1000, lr: float = 2e-3, batch_size: int = 256, seed: int | Sequence[int] = 0) -> Params:
    """One SAE per model on activations `acts` (N, T, d) (model n's tokens acts[n]); stacked SAE params
    {W_enc (N, d, m), b_enc (N, m), W_dec (N, m, d), b_dec (N, d)}, m = width_mult · d (see the module
    docstring for the recipe), on the CPU in float32. `seed`: an int, or one seed per model (model n then
    depends on seed[n] and its own activations alone: its initialisation and its batches). Trained by the
    engine's loop (`fit`, on the run's device and precision): Adam at a constant `lr`, `steps` batches of
    `batch_size` tokens, each model's tokens shuffled epoch by epoch, the decoder's rows on the unit sphere
    (`Optim.unit_rows`)."""
    if kind not in KINDS:
        raise UnlearnkitError(f"SAE kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if acts.dim() != 3 or acts.shape[1] == 0:
        raise UnlearnkitError(f"train_sae wants activations (models, tokens, d), got shape {tuple(acts.shape)}")
    n, t, d = acts.shape
    m = int(width_mult) * d
    topk = k if kind == "topk" else 0
    if kind == "topk" and not 1 <= k <= m:
        raise UnlearnkitError(f"SAE k={k} must be in [1, {m}] (the dictionary's width)")
    x = acts.detach().float().cpu()
    scale = (d / x.pow(2).sum(-1).mean(1)).sqrt()                     # (N,): E‖scale·x‖² = d
    x = x * scale[:, None, None]
    seeds = _model_seeds(seed, n)
    w_dec = torch.stack([torch.randn(m, d, generator=torch.Generator().manual_seed(s)) for s in seeds])
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    init = {"W_enc": w_dec.transpose(1, 2).contiguous(), "b_enc": torch.zeros(n, m), "W_dec": w_dec,
            "b_dec": _geometric_median(x)}

    def loss(sae: Params, batch, frozen) -> torch.Tensor:  # one model's
        xb = batch["tokens"][0]
        f = encode(sae, xb, topk)
        err = (decode(sae, f).float() - xb.float()).pow(2).sum(-1).mean()
        return err + (l1 * f.float().sum(-1).mean() if kind == "relu" else 0)  # ‖W_dec[i]‖ = 1: the L1 is Σ f_i

    stream = EpochStream(torch.arange(n * t).view(n, t), seeds, batch_size, tag=SAE_STREAM)
    p = fit(loss, init, {"tokens": stream}, (x.flatten(0, 1), torch.zeros(n * t, dtype=torch.long)), steps,
            Optim("adam", lr, 0.0, 0.0, "constant", unit_rows=("W_dec",)), desc="sae")
    s = scale[:, None]  # fold the input scale back: features and b_dec in raw units, W_dec unit-norm
    return {**p, "b_enc": p["b_enc"] / s, "b_dec": p["b_dec"] / s}


@dataclass
class SAEStats:
    """Per model (N,): explained variance 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², mean L0 (active features per
    token) and the fraction of features that never fire on these tokens."""

    explained_variance: torch.Tensor
    l0: torch.Tensor
    dead: torch.Tensor


@torch.no_grad()
def sae_stats(sae: Params, acts: torch.Tensor, k: int = 0) -> SAEStats:
    f = encode(sae, acts, k)
    resid = (decode(sae, f) - acts).pow(2).sum((1, 2))
    total = (acts - acts.mean(1, keepdim=True)).pow(2).sum((1, 2))
    return SAEStats(1 - resid / total, (f > 0).float().sum(-1).mean(1), ((f > 0).sum(1) == 0).float().mean(-1))


# --- choosing and clamping features --------------------------------------------------------------------

@torch.no_grad()
def feature_scores(sae: Params, acts_forget: torch.Tensor, acts_retain: torch.Tensor, k: int = 0,
                   how: str = "ratio", delta: float = 0.1) -> torch.Tensor:
    """(N, m) score of each feature: how much more it fires on forget tokens than on retain tokens; 0 for a
    feature that fires no more on the forget tokens than on the retain ones (never chosen).

    how="ratio" (default): μ_F / (μ_R + δ), μ the feature's mean activation on the forget / retain tokens
    and δ = `delta` × the mean of μ_F over features (scale-free): a feature's activation on the concept's
    inputs relative to the other inputs', the contrast SAUCE and SAeUron (Cywiński & Deja 2025) select
    features by (the normalisation and δ are ours); δ keeps a feature that barely fires anywhere from
    winning on a near-zero denominator.
    how="mean": μ_F − μ_R. how="freq": the difference of activation frequencies (fraction of tokens with
    f > 0; Farrell et al. keep features that fire on the forget questions and rarely on retained text).
    In a sweep on tofu-synth-tiny (authors:0.1, N = 2, TopK and ReLU SAEs, 4–32 features) "ratio" lowered
    the forget answers' probability most for a given loss on retained authors."""
    if how not in SCORES:
        raise UnlearnkitError(f"feature score must be one of {', '.join(SCORES)}, got {how!r}")
    ff, fr = encode(sae, acts_forget, k), encode(sae, acts_retain, k)
    if how == "freq":
        ff, fr = (ff > 0).float(), (fr > 0).float()
    mf, mr = ff.mean(1), fr.mean(1)
    if how == "ratio":
        ratio = mf / (mr + delta * mf.mean(-1, keepdim=True))
        return torch.where(mf > mr, ratio, torch.zeros_like(ratio))
    return (mf - mr).clamp(min=0)


def top_features(scores: torch.Tensor, n_features: int) -> torch.Tensor:
    """(N, m) bool mask of each model's `n_features` highest-scoring features (positive scores only: a
    feature firing no more on the forget items than on retained ones is never chosen, so fewer may be)."""
    n_features = min(int(n_features), scores.shape[-1])
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if n_features <= 0:
        return mask
    vals, idx = scores.topk(n_features, dim=-1)
    return mask.scatter(-1, idx, vals > 0)


@torch.no_grad()
def clamp_values(sae: Params, acts_forget: torch.Tensor, mask: torch.Tensor, clamp: float,
                 k: int = 0) -> torch.Tensor:
    """(N, m): −clamp × each chosen feature's mean activation on the forget tokens where it fires; 0 for the
    others. Farrell et al. clamp an active feature to a fixed negative value (−c); their SAEs' activations
    have one scale, the models of an ensemble each their own, so c is taken here in units of the feature's
    own typical activation."""
    f = encode(sae, acts_forget, k)
    on = (f > 0).float()
    typical = (f * on).sum(1) / on.sum(1).clamp(min=1)
    return torch.where(mask, -clamp * typical, torch.zeros_like(typical))


def clamp_hidden(sae: Params, h: torch.Tensor, k: int = 0) -> torch.Tensor:
    """h + (f_clamped − f) W_dec for one model's SAE (called per model, or under vmap): the chosen features
    (sae["mask"] > 0) that fire (f > 0) set to sae["clamp"], the reconstruction error h − x̂(f) kept."""
    f = encode(sae, h, k)
    delta = torch.where((sae["mask"] > 0) & (f > 0), sae["clamp"] - f, torch.zeros_like(f))
    return h + delta @ sae["W_dec"]


# --- the clamped forward pass ---------------------------------------------------------------------------

def sae_entries(sae: Params, mask: torch.Tensor, clamp: torch.Tensor, layer: int, k: int = 0) -> Params:
    """The `sae.*` entries a method adds to the params it returns (all stacked, leading dim N):
    sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.mask (N, m) 0/1 float, sae.clamp (N, m) float,
    sae.layer (N,) int64 (the block, 1-based), sae.k (N,) int64 (TopK's k; 0 = ReLU)."""
    n = mask.shape[0]
    out = {PREFIX + key: sae[key] for key in SAE_KEYS}
    out.update({PREFIX + "mask": mask.float(), PREFIX + "clamp": clamp.float(),
                PREFIX + "layer": torch.full((n,), int(layer), dtype=torch.long),
                PREFIX + "k": torch.full((n,), int(k), dtype=torch.long)})
    return out


class ClampedForward(Forward):
    """(params, input_ids) -> logits like `LMForward`, with block `layer`'s output clamped by the SAE
    whose tensors arrive in `params` under the reserved prefix "sae." (`sae_entries`).

    Why in params: `torch.vmap(forward, in_dims=(0, None))` slices every entry of the stacked params dict,
    so model i meets its own SAE i with no index to carry. The hook that edits the block's output is
    registered for the duration of one call and closes over that call's (possibly batched) SAE tensors,
    so it composes with vmap and functional_call, and with torch.func.grad taken over the LM entries only
    (`split_sae`: the int64 `sae.layer` / `sae.k` cannot require gradients). Params without `sae.*`
    entries give exactly the wrapped forward's logits. `sae.layer` and `sae.k` are metadata (read by
    `from_params`, ignored in the call: they cannot steer Python control flow under vmap).
    """

    def __init__(self, forward: LMForward | object, layer: int, k: int = 0):  # object: a GPT2Config
        """`forward`: an LMForward, or a GPT2Config to build one."""
        self.inner = forward if isinstance(forward, LMForward) else LMForward(forward)
        super().__init__(self.inner.module)
        self.config = self.inner.config
        n = len(self.inner.blocks)
        if not 1 <= layer <= n:
            raise UnlearnkitError(f"SAE layer must be in [1, {n}] (a block's output), got {layer}")
        self.layer, self.k = int(layer), int(k)

    @classmethod
    def from_params(cls, forward: LMForward, params: Params) -> ClampedForward:
        """The ClampedForward that a method's returned params (with `sae.*` entries) call for."""
        if PREFIX + "layer" not in params:
            raise UnlearnkitError("these params carry no SAE (no sae.layer entry)")
        return cls(forward, int(params[PREFIX + "layer"].reshape(-1)[0]), int(params[PREFIX + "k"].reshape(-1)[0]))

    def _hook(self, sae: Params) -> Callable:
        def hook(module, args, out):
            h = out[0] if isinstance(out, tuple) else out
            new = clamp_hidden(sae, h, self.k)
            return (new, *out[1:]) if isinstance(out, tuple) else new
        return hook

    @contextmanager
    def attached(self, module: nn.Module, sae: Params):
        """Clamp `module`'s block `layer` with one model's SAE while inside (for Hugging Face `generate`)."""
        blocks = self.inner.blocks if module is self.inner.module else LMForward(module=module).blocks
        if not 1 <= self.layer <= len(blocks):
            raise UnlearnkitError(f"SAE layer must be in [1, {len(blocks)}] (a block's output), got {self.layer}")
        handle = blocks[self.layer - 1].register_forward_hook(self._hook(sae))
        try:
            yield module
        finally:
            handle.remove()

    def __call__(self, params: Params, input_ids: torch.Tensor) -> torch.Tensor:
        lm, sae = split_sae(params)
        if not sae:
            return self.inner(lm, input_ids)
        with self.attached(self.inner.module, sae):
            return self.inner(lm, input_ids)

    def hidden(self, params: Params, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
        lm, sae = split_sae(params)
        if not sae:
            return self.inner.hidden(lm, input_ids, layer)
        with self.attached(self.inner.module, sae):
            return self.inner.hidden(lm, input_ids, layer)


def sae_hook(module: nn.Module, sae: Params):
    """A context that clamps `module` (a Hugging Face causal LM whose parameters are one model's) with ONE
    model's SAE entries (`split_sae`'s second dict sliced at model i: W_enc …, mask, clamp, layer, k) while
    inside; does nothing for an empty dict. Generation uses it (`steering.answers_for`), so every generated
    metric (ROUGE, probes, fluency) goes through the clamp."""
    if not sae:
        return nullcontext(module)
    layer, k = int(sae["layer"].reshape(-1)[0]), int(sae["k"].reshape(-1)[0])
    return ClampedForward(LMForward(module=module), layer, k).attached(module, sae)


# --- activations ------------------------------------------------------------------------------------------

@torch.no_grad()
def residual_acts(forward: LMForward, params: Params, input_ids: torch.Tensor, layer: int, pad_id: int,
                  chunk: int = 64) -> torch.Tensor:
    """(N, T, d): block `layer`'s output of N models at the T real (non-padding) tokens of `input_ids`."""
    keep = input_ids != pad_id  # padding dropped chunk by chunk: never all N models' padded activations at once
    params = {k: v.to(current().device) for k, v in params.items()}  # moved once, not per chunk
    return torch.cat([predict(lambda p, x: forward.hidden(p, x, layer), params, input_ids[s:s + chunk], chunk)
                      [:, keep[s:s + chunk]] for s in range(0, len(input_ids), chunk)], 1)
