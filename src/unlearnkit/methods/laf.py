import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..engine import EpochStream, Optim, Params, derived_seed, predict
from ..errors import UnlearnkitError
from ..zoo import template
from .base import Context, HParams, register

LAF_TAG = 0x4C4146  # "LAF": the VAEs' initialisation and noise draws
HIDDEN = (128, 32)  # the VAE's hidden widths, encoder (the decoder mirrors them): the reference's 256→128→32


@dataclass(frozen=True)
class LAFParams(HParams):
    latent: int = 8              # VAE latent dimension
    vae_epochs: int = 10
    vae_min_steps: int = 500     # each VAE trains at least this many steps (a small S_F's epochs are a few)
    vae_lr: float = 1e-3         # Adam
    kl_weight: float = 0.025
    epochs: float = 20.0         # passes over S_F; each step one forget and one retain batch, two updates
    lr_ue: float = 5e-5          # Adam, extractor unlearning
    lr_ra: float = 1e-4          # Adam, representation alignment
    temperature: float = 5.0
    batch_size: int = 32

    search_space: ClassVar[dict] = {"lr_ue": ("log", 1e-5, 1e-3), "lr_ra": ("log", 1e-5, 1e-3),
                                    "epochs": ("float", 5.0, 40.0), "temperature": ("float", 1.0, 20.0)}

    def _checks(self):
        return [("latent", self.latent >= 1, "must be >= 1"), ("vae_epochs", self.vae_epochs >= 1, "must be >= 1"),
                ("vae_min_steps", self.vae_min_steps >= 0, "must be >= 0"),
                ("vae_lr", self.vae_lr > 0, "must be > 0"), ("kl_weight", self.kl_weight >= 0, "must be >= 0"),
                ("epochs", self.epochs > 0, "must be > 0"), ("lr_ue", self.lr_ue > 0, "must be > 0"),
                ("lr_ra", self.lr_ra > 0, "must be > 0"), ("temperature", self.temperature > 0, "must be > 0"),
                ("batch_size", self.batch_size >= 1, "must be >= 1")]

    def check_setting(self, task, dataset, forget, seed) -> None:
        if next(template(task, dataset).body.parameters(), None) is None:
            raise UnlearnkitError(f"laf unlearns a feature extractor (the layers below the classifier head), and "
                                  f"{task.name}'s {task.model} has none: use a task with hidden layers")


@dataclass(frozen=True)
class LAFRParams(LAFParams):
    repair_epochs: float = 5.0   # passes of the head's supervised fine-tune, counted over S_F like `epochs`
    repair_lr: float = 1e-3      # Adam

    search_space: ClassVar[dict] = {**LAFParams.search_space, "repair_lr": ("log", 1e-4, 1e-2)}

    def _checks(self):
        return super()._checks() + [("repair_epochs", self.repair_epochs > 0, "must be > 0"),
                                    ("repair_lr", self.repair_lr > 0, "must be > 0")]


def vae_init(dim: int, latent: int, seeds: list[int]) -> Params:
    """Stacked parameters of one VAE per seed (PyTorch's Linear initialisation, model i from seeds[i])."""
    sizes = {"enc1": (dim, HIDDEN[0]), "enc2": HIDDEN, "mu": (HIDDEN[1], latent), "logvar": (HIDDEN[1], latent),
             "dec1": (latent, HIDDEN[1]), "dec2": HIDDEN[::-1], "dec3": (HIDDEN[0], dim)}
    models = []
    for seed in seeds:
        with torch.random.fork_rng():
            torch.manual_seed(derived_seed(seed, LAF_TAG))
            models.append({name: torch.nn.Linear(*shape) for name, shape in sizes.items()})
    return {f"{name}.{w}": torch.stack([getattr(m[name], w).detach() for m in models])
            for name in sizes for w in ("weight", "bias")}


def _linear(p: Params, name: str, h: torch.Tensor) -> torch.Tensor:
    return F.linear(h, p[f"{name}.weight"], p[f"{name}.bias"])


def vae_encode(p: Params, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, log σ²) of the latent posterior of embeddings e (batch, dim)."""
    h = F.relu(_linear(p, "enc2", F.relu(_linear(p, "enc1", e))))
    return _linear(p, "mu", h), _linear(p, "logvar", h)


def vae_reconstruct(p: Params, e: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ê, μ, log σ²): the decoding of the reparameterised sample z = μ + σ·eps (eps ~ N(0, I) given)."""
    mu, logvar = vae_encode(p, e)
    z = mu + torch.exp(0.5 * logvar) * eps
    h = F.relu(_linear(p, "dec2", F.relu(_linear(p, "dec1", z))))
    return _linear(p, "dec3", h), mu, logvar


def vae_objective(p: Params, e: torch.Tensor, eps: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """The negative ELBO LAF trains its VAEs with (reference code, Train.vae_loss_function), batch means of
        ‖ê − e‖²  +  kl_weight · KL(N(μ, σ²) ‖ N(0, I)),   KL = −½ Σ_j (1 + log σ_j² − μ_j² − σ_j²)."""
    e_hat, mu, logvar = vae_reconstruct(p, e, eps)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)
    return ((e_hat - e).pow(2).sum(-1) + kl_weight * kl).mean()


def squashed_error(p: Params, e: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """exp(m / (m + 1)) per embedding, m = ‖ê − e‖² its reconstruction error: LAF's bounded score in [1, e)."""
    e_hat, _, _ = vae_reconstruct(p, e, eps)
    m = (e_hat - e).pow(2).sum(-1)
    return torch.exp(m / (m + 1))


def alignment_loss(e_r, t_r, e_f, t_f, temperature: float) -> torch.Tensor:
    """LAF's representation alignment (reference code, extractor_loss_functioncosine), with d = 1 − cos
    between an embedding and the original model's embedding of the same input:
        Σ_{r ∈ retain batch} log( exp(d_r) / Σ_{f ∈ forget batch} exp(d_f / τ) )
    minimising it keeps retain embeddings aligned with the original's and pushes forget ones away. τ divides
    the forget distances only, as the reference computes it."""
    d_r = 1 - F.cosine_similarity(e_r, t_r, dim=-1)
    d_f = 1 - F.cosine_similarity(e_f, t_f, dim=-1)
    return (d_r - torch.logsumexp(d_f / temperature, dim=0)).sum()


def noise(seeds: list[int], rows: int, latent: int, *tags: int) -> torch.Tensor:
    """(N, rows, latent) standard normal draws, model i's from its seed and `tags` alone."""
    gens = [torch.Generator().manual_seed(derived_seed(s, LAF_TAG, *tags)) for s in seeds]
    return torch.stack([torch.randn(rows, latent, generator=g) for g in gens])


def train_vaes(ctx: Context, hp: LAFParams, embeddings: torch.Tensor, positions, which: int) -> Params:
    """One VAE per model on that model's embeddings (N, n_train, dim) of `positions`: `vae_epochs` epochs
    (more if that is under `vae_min_steps` steps) of Adam on batches of `batch_size`, a fresh noise draw
    for every example in every epoch."""
    seeds, latent = ctx.seeds, hp.latent
    params = vae_init(embeddings.shape[-1], latent, [derived_seed(s, which) for s in seeds])

    def loss(p, batch, frozen):
        _, _, idx = batch["vae"]
        return vae_objective(p, frozen["embeddings"][idx], frozen["eps"][idx], hp.kl_weight)

    carry, optim = {}, Optim("adam", hp.vae_lr, 0.0, 0.0, "constant")
    per_epoch = ctx.stream("laf-vae", positions, hp.batch_size).steps_per_epoch
    for epoch in range(max(hp.vae_epochs, math.ceil(hp.vae_min_steps / per_epoch))):
        eps = noise(seeds, len(ctx.dataset.y_train), latent, which, epoch)
        params = ctx.fit(loss, {"vae": ctx.stream(f"laf-vae{which}-{epoch}", positions, hp.batch_size)}, 1, optim,
                         params=params, frozen={"embeddings": embeddings, "eps": eps}, carry=carry, desc=None)
    return params


def laf_unlearn(ctx: Context, hp: LAFParams) -> Params:
    """LAF without labels (Shen et al. 2024): the two VAEs, then alternating extractor unlearning and
    representation alignment from the originals."""
    forward, seeds = ctx.forward, ctx.seeds
    embeddings = predict(forward.embed, ctx.originals, ctx.dataset.x_train)
    everything = torch.arange(len(ctx.dataset.y_train))
    vae_all = train_vaes(ctx, hp, embeddings, everything, 0)
    vae_forget = train_vaes(ctx, hp, embeddings, ctx.forget, 1)
    del embeddings

    def unlearning(params, batch, frozen):  # L_UE: reconstruction error down on S_R, up on S_F
        (x_r, _, _), (x_f, _, _) = batch["retain"], batch["forget"]
        s_r = squashed_error(frozen["vae_all"], forward.embed(params, x_r), frozen["eps_r"])
        s_f = squashed_error(frozen["vae_forget"], forward.embed(params, x_f), frozen["eps_f"])
        return s_r.sum() - s_f.sum()

    def alignment(params, batch, frozen):  # L_RA: contrastive alignment with the original's embeddings
        (x_r, _, _), (x_f, _, _) = batch["retain"], batch["forget"]
        teacher = frozen["teacher"]
        return alignment_loss(forward.embed(params, x_r), forward.embed(teacher, x_r),
                              forward.embed(params, x_f), forward.embed(teacher, x_f), hp.temperature)

    def streams(t: int) -> dict[str, EpochStream]:  # one fresh batch of each set per step, used by both updates
        return {"forget": ctx.stream(f"laf-forget{t}", ctx.forget, hp.batch_size),
                "retain": ctx.stream(f"laf-retain{t}", ctx.retain, hp.batch_size)}

    per_epoch = streams(0)["forget"].steps_per_epoch
    ue, ra = Optim("adam", hp.lr_ue, 0.0, 0.0, "constant"), Optim("adam", hp.lr_ra, 0.0, 0.0, "constant")
    carry_ue, carry_ra, params = {}, {}, ctx.originals
    for t in range(max(1, round(hp.epochs * per_epoch))):
        s = streams(t)
        eps = {"eps_r": noise(seeds, s["retain"].batch_size, hp.latent, 2, t),
               "eps_f": noise(seeds, s["forget"].batch_size, hp.latent, 3, t)}
        params = ctx.fit(unlearning, s, 1 / per_epoch, ue, params=params, carry=carry_ue, desc=None,
                         frozen={"vae_all": vae_all, "vae_forget": vae_forget, **eps})
        params = ctx.fit(alignment, s, 1 / per_epoch, ra, params=params, carry=carry_ra, desc=None,
                         frozen={"teacher": ctx.originals})
    return params


@register("laf", LAFParams)
def laf(ctx: Context, hp: LAFParams) -> Params:
    """LAF, Label-Agnostic Forgetting: unlearning without labels, on the penultimate representations.

    Shen, Zhang, Zhao, Bialkowski, Chen & Xu 2024, "Label-Agnostic Forgetting: A Supervision-Free Unlearning
    in Deep Models" (ICLR 2024, arXiv 2404.00506); reference code ShaofeiShen768/LAF
    (VUnlearning.py, Train.vae_train, Model.VariationalAutoencoder). Per model: (1) two VAEs on the
    original's embeddings e = g(x) (`Forward.embed`, what the head reads), one on all of the training
    data, one on S_F (dim→128→32→latent and back; Adam 1e-3, 10 epochs, batch 32; loss ‖ê − e‖² + 0.025·KL).
    (2) Alternating, for `epochs` passes over S_F, each step with one forget and one retain batch of 32:
    extractor unlearning, one Adam step (lr 5e-5) on
        L_UE = Σ_{x∈B_R} exp(m_D(x)/(m_D(x)+1)) − Σ_{x∈B_F} exp(m_F(x)/(m_F(x)+1)),
    m_D and m_F the reconstruction errors of the current embedding under the all-data and the forget VAE
    (the VAEs are frozen); then representation alignment, one Adam step (lr 1e-4, its own state) on the
    contrastive `alignment_loss` against the original's embeddings (τ = 5). The head is never updated.
    Settings: the reference's Fashion-MNIST/MNIST random-unlearning ones (latent 8, 20 epochs, lr 5e-5 /
    1e-4, τ 5). No label is read: the batches' labels go unused.
    Deviations: each VAE trains at least `vae_min_steps` steps (the reference's forget sets, 40% of five
    classes, give its forget VAE thousands of steps in 10 epochs; 10 epochs of 100 points are 40 steps,
    which leave it unfitted, its errors saturated and L_UE's forget term without gradient); the decoder's
    output is linear (the reference's ends in a sigmoid, which cannot reproduce ReLU features above 1);
    the reference's loaders walk both sets in epochs, here each step draws a fresh per-model batch of
    each; the embedding is the input of the last layer (the reference CNN's fc1 output). Its steps scale
    with |S_F| as the reference's do: on a forget set of 100, 20 epochs are 80 steps of each update.
    """
    return laf_unlearn(ctx, hp)


@register("laf+r", LAFRParams)
def laf_r(ctx: Context, hp: LAFRParams) -> Params:
    """LAF+R: LAF, then the classifier head fine-tuned on labelled retain data (Shen et al. 2024).

    After `laf`, the head alone (the last layer; the reference's fc2) is trained with cross-entropy on retain
    batches of 32 by Adam (`repair_lr`), `repair_epochs` passes counted over S_F as LAF's steps are (the
    reference's classifier_unlearning zips the forget and retain loaders). The extractor stays as LAF left
    it. The reference publishes no settings for this step: 5 passes at Adam 1e-3 are ours.
    """
    params = laf_unlearn(ctx, hp)
    head = ctx.forward.head_names
    mask = {k: torch.full_like(v, float(k in head)) for k, v in params.items()}

    def loss(p, batch, frozen):
        x, y, _ = batch["retain"]
        return F.cross_entropy(ctx.forward(p, x), y)

    stream = ctx.stream("laf-repair", ctx.retain, hp.batch_size)
    steps = max(1, round(hp.repair_epochs * ctx.stream("laf-forget0", ctx.forget, hp.batch_size).steps_per_epoch))
    return ctx.fit(loss, {"retain": stream}, steps / stream.steps_per_epoch,
                   Optim("adam", hp.repair_lr, 0.0, 0.0, "constant"), params=params, update_mask=mask,
                   desc="laf+r repair")
