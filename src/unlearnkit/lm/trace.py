"""Causal tracing of the facts a language model knows: which blocks' MLP and attention carry them.

Meng, Bau, Andonian & Belinkov 2022, "Locating and Editing Factual Associations in GPT" (ROME, NeurIPS
2022, arXiv 2202.05262), §2.1, and their `experiments/causal_trace.py` (kmeng01/rome). Three runs per
fact:

- clean: the question–answer pair as it is; every block's output, MLP output and attention output is kept;
- corrupted: Gaussian noise ε ~ N(0, ν²) is added to the token embeddings of the SUBJECT (here the
  author's name), ν = 3 × the standard deviation of the subject tokens' embeddings (ROME's 3σ);
- corrupted-with-restoration: the corrupted run again, except that ONE state (a block's output, its MLP's
  output or its attention's output, at one layer and one token position) is set to its clean value.

The indirect effect of that state is IE = P_restored(answer) − P_corrupted(answer): how much of the
answer's probability the state alone brings back. ROME's finding (GPT-2 XL): MLP outputs at the LAST
subject token in early-middle layers carry most of it; attention matters at the last token.

What is measured here, per model, layer and kind (and item):

- the answer probability is the teacher-forced TOFU probability, the per-token geometric mean
  exp(mean log p(answer token | prefix)) (ROME scores the first token of a one-token object; TOFU
  answers are sentences). Noise samples are averaged in probability space, as ROME does;
- states are restored at the last subject token (`restored`), and, with `positions`, at every question
  token, summarised over ROME's token categories (`POSITIONS`: first / middle / last subject token,
  first token after the subject, further tokens, the last question token);
- with `window` w > 1, an MLP or attention state is restored in the w layers around the layer at once
  (ROME uses 10 of GPT-2 XL's 48; 1, the default, suits models of a few blocks); block outputs one at a time;
- the same noise (seeded per model) is used in every corrupted run of a model, so effects are paired.

Deviation (`corrupt_answer`, on by default): tofu-synth answers repeat the subject ("Where was X born?"
→ "X was born in Velmora."), and under teacher forcing a clean repetition hands the subject to the fact's
tokens, so corrupting the question alone measures mostly the copying of the name. The subject is
therefore corrupted wherever it occurs (question and answer), "the last subject token" is restored at
every occurrence, and the answer probability is scored on the answer's other tokens — the fact
(`score_subject=False`). With one occurrence this is ROME's setting; `corrupt_answer=False,
score_subject=True` is the literal one (question corrupted, whole answer scored).

Everything runs per model (a loop over the N stacked models; each model's batch is its items × noise
samples) on the current `engine.compute` device, without gradients.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from tokenizers import Tokenizer

from ..data.tofu_synth import ATTRIBUTES, CANARY_TEMPLATES, QA
from ..engine import Params
from ..engine.compute import current
from ..errors import UnlearnkitError
from .model import LMForward, mean_token_logprob, shifted_token_logprobs

KINDS = ("block", "mlp", "attn")
POSITIONS = ("first subject", "middle subject", "last subject", "first after", "further", "last question")
_TAG_NOISE = 0x7ACE


# ---------------------------------------------------------------------------------------------------
# Subjects: where the author's name (or a canary's label) sits in a question's tokens
# ---------------------------------------------------------------------------------------------------

def _template_pattern(template: str) -> re.Pattern:
    """A question template as a regex with one named group per slot."""
    parts = re.split(r"(\{\w+\})", template)
    return re.compile("".join(f"(?P<{p[1:-1]}>.+?)" if re.fullmatch(r"\{\w+\}", p) else re.escape(p) for p in parts))


_QUESTION_PATTERNS = [_template_pattern(q) for a in ATTRIBUTES for q in a.questions] + \
                     [_template_pattern(q) for q, _, _ in CANARY_TEMPLATES]


def subject_span(question: str) -> tuple[int, int] | None:
    """(start, end) characters of a tofu-synth question's subject, or None if no template matches.

    The subject is the author's name ({name}); in the name question ("Who is the author born in {city}
    on {date}?") it is the span from the city to the date, which identifies the author; in a canary's
    question it is the vault's / locker's / account's label."""
    for pattern in _QUESTION_PATTERNS:
        m = pattern.fullmatch(question)
        if m is None:
            continue
        groups = m.groupdict()
        if "name" in groups:
            return m.span("name")
        if "city" in groups and "date" in groups:
            return m.start("city"), m.end("date")
        if "label" in groups:
            return m.span("label")
    return None


def subject_tokens(tok: Tokenizer, items: Sequence[QA], max_len: int,
                   subjects: Sequence[str] | None = None) -> list[np.ndarray]:
    """Per item, the sorted positions of its subject's tokens in the question of its encoded row
    (`tokenizer.encode_qa`: question, a space, answer; positions < max_len).

    `subjects`: the subject strings (one per item, found in the question), for items not generated by
    tofu-synth; by default they come from tofu-synth's question templates (`subject_span`). Raises
    UnlearnkitError naming the items whose subject cannot be found."""
    if subjects is not None and len(subjects) != len(items):
        raise UnlearnkitError(f"{len(subjects)} subjects given for {len(items)} items")
    out, missing = [], []
    for j, qa in enumerate(items):
        q = qa.question
        if subjects is None:
            span = subject_span(q)
        else:
            k = q.find(subjects[j]) if subjects[j] else -1
            span = None if k < 0 else (k, k + len(subjects[j]))
        if span is None:
            missing.append(qa)
            out.append(np.zeros(0, dtype=np.int64))
            continue
        enc = tok.encode(q + " " + qa.answer.lstrip())
        start, end = span
        pos = [i for i, (a, b) in enumerate(enc.offsets) if a < end and b > start and b <= len(q) and i < max_len]
        if not pos:
            missing.append(qa)
        out.append(np.asarray(pos, dtype=np.int64))
    if missing:
        shown = "; ".join(f"item {qa.id}: {qa.question!r}" for qa in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UnlearnkitError(f"causal tracing: cannot find the subject in {len(missing)} of {len(items)} questions "
                              f"({shown}{more}); tracing needs the subject (the author's name) in each question's "
                              f"first {max_len} tokens")
    return out


def _subject_repeats(ids: torch.Tensor, labels: torch.Tensor, positions: np.ndarray) -> list[range]:
    """Token ranges of the answer where the question's subject tokens recur (as one contiguous run)."""
    subject = ids[positions].tolist()
    k, row = len(subject), ids.tolist()
    answer = (labels != -100).nonzero().flatten().tolist()
    if not answer or not k:
        return []
    return [range(s, s + k) for s in range(answer[0], len(row) - k + 1) if row[s:s + k] == subject]


# ---------------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------------

def block_modules(forward: LMForward) -> tuple[torch.nn.Module, list[dict[str, torch.nn.Module]]]:
    """(the token-embedding module, per block {"block", "mlp", "attn"}) of a GPT-2/Llama-style model."""
    blocks = []
    for i, b in enumerate(forward.blocks):
        mlp = getattr(b, "mlp", None)
        attn = getattr(b, "attn", None) or getattr(b, "self_attn", None)
        if mlp is None or attn is None:
            raise UnlearnkitError(f"causal tracing: block {i} ({type(b).__name__}) has no `mlp` and `attn`/`self_attn`")
        blocks.append({"block": b, "mlp": mlp, "attn": attn})
    return forward.module.get_input_embeddings(), blocks


def mlp_parameter_names(forward: LMForward, params: Params, layers: Sequence[int]) -> list[str]:
    """Names of every parameter of the MLPs of blocks `layers` (0-based): GPT-2's c_fc and c_proj (weights
    and biases), Llama's gate/up/down projections."""
    n = len(forward.blocks)
    bad = [b for b in layers if not 0 <= b < n]
    if bad:
        raise UnlearnkitError(f"MLP layers {bad} out of range: the model has {n} blocks (0 to {n - 1})")
    prefix = next(name for name, m in forward.module.named_modules() if m is forward.blocks)
    _, mods = block_modules(forward)
    wanted = []
    for b in layers:
        mlp_name = next(name for name, m in mods[b]["block"].named_children() if m is mods[b]["mlp"])
        wanted.append(f"{prefix}.{b}.{mlp_name}.")
    names = [k for k in params if any(k.startswith(w) for w in wanted)]
    if not names:
        raise UnlearnkitError(f"no MLP parameters found for blocks {list(layers)} (looked for {wanted})")
    return names


def _untuple(out):
    return out[0] if isinstance(out, tuple) else out


def _retuple(out, h):
    return (h, *out[1:]) if isinstance(out, tuple) else h


@contextmanager
def _hooked(forward: LMForward, noise: torch.Tensor | None, restore: dict, record: dict | None):
    """Hooks for one forward pass: `noise` (B, L, d) added to the token embeddings; `restore`
    {(kind, layer): (clean states (B, L, d), mask (B, L) bool)} puts the clean state where mask is set;
    `record` (a dict) receives every (kind, layer) output."""
    embed, mods = block_modules(forward)
    handles = []
    if noise is not None:
        handles.append(embed.register_forward_hook(lambda m, a, out: out + noise.to(out.dtype)))
    for layer, m in enumerate(mods):
        for kind in KINDS:
            key = (kind, layer)
            if key not in restore and record is None:
                continue

            def hook(module, args, out, key=key):
                h = _untuple(out)
                if key in restore:
                    clean, mask = restore[key]
                    h = torch.where(mask[..., None], clean.to(h.dtype), h)
                if record is not None:
                    record[key] = h.detach()
                return _retuple(out, h)

            handles.append(m[kind].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def answer_probability(forward: LMForward, params: Params, ids: torch.Tensor, labels: torch.Tensor,
                       noise: torch.Tensor | None = None, restore: dict | None = None,
                       record: dict | None = None) -> torch.Tensor:
    """(B,) teacher-forced answer probability exp(mean answer-token log p) of ONE model's rows, with
    `noise` on the token embeddings and the `restore`d states (see `_hooked`)."""
    with torch.no_grad(), _hooked(forward, noise, restore or {}, record):
        logits = forward(params, ids)
    lp, mask = shifted_token_logprobs(logits, labels)
    return mean_token_logprob(lp, mask).exp()


# ---------------------------------------------------------------------------------------------------
# The trace
# ---------------------------------------------------------------------------------------------------

@dataclass
class TraceResult:
    """Answer probabilities of N models on n items: clean (N, n), corrupted (N, n), restored at the last
    subject token {kind: (N, layers, n)} and, if traced, at each token category {kind: (N, layers,
    len(POSITIONS), n)} (NaN where an item has no token of the category)."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    restored: dict[str, torch.Tensor]
    by_position: dict[str, torch.Tensor] | None = None
    settings: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return self.restored["mlp"].shape[1]

    def effects(self) -> dict[str, torch.Tensor]:
        """Indirect effects at the last subject token {kind: (N, layers, n)}."""
        return {k: v - self.corrupted[:, None, :] for k, v in self.restored.items()}

    def mean_effects(self) -> dict[str, np.ndarray]:
        """{kind: (layers,)} indirect effects averaged over models and items."""
        return {k: v.mean(dim=(0, 2)).double().numpy() for k, v in self.effects().items()}

    def top_layers(self, k: int, kind: str = "mlp") -> list[int]:
        """The k blocks (0-based, ascending) whose `kind` state has the largest mean indirect effect."""
        if not 1 <= k <= self.n_layers:
            raise UnlearnkitError(f"cannot pick {k} of the model's {self.n_layers} blocks; use 1 to {self.n_layers}")
        ie = self.mean_effects()[kind]
        return sorted(int(i) for i in np.argsort(-ie, kind="stable")[:k])

    def table(self) -> list[dict]:
        """One row per block: mean indirect effect of its output, MLP and attention at the last subject token
        (and, if traced, each kind's per token category; None where no item has a token of the category)."""
        ie = self.mean_effects()
        rows = [{"layer": i, **{k: float(ie[k][i]) for k in KINDS}} for i in range(self.n_layers)]
        if self.by_position is not None:
            for kind, t in self.by_position.items():
                eff = t - self.corrupted[:, None, None, :]
                per = _nanmean_models(eff)
                for i, row in enumerate(rows):
                    row[f"{kind}_by_position"] = {p: None if np.isnan(per[i, c]) else float(per[i, c])
                                                  for c, p in enumerate(POSITIONS)}
        return rows

    def to_dict(self, top: int | None = None) -> dict:
        out = {"settings": self.settings, "models": int(self.clean.shape[0]), "items": int(self.clean.shape[1]),
               "p_clean": float(self.clean.mean()), "p_corrupted": float(self.corrupted.mean()),
               "layers": self.table()}
        if top is not None:
            out["top_mlp_layers"] = self.top_layers(top)
        return out


def _nanmean_models(eff: torch.Tensor) -> np.ndarray:
    """(layers, categories) mean of (N, layers, categories, n) over models and items, ignoring NaN."""
    e = eff.permute(1, 2, 0, 3).flatten(2).double()
    return torch.nanmean(e, dim=-1).numpy()


def _categories(positions: np.ndarray, n_question: int) -> dict[int, int]:
    """Question token position -> index in POSITIONS (ROME's token categories); the last question token
    is its own category unless the subject ends the question."""
    first, last = int(positions[0]), int(positions[-1])
    cat = {}
    for t in range(n_question):
        if first <= t <= last:
            cat[t] = 2 if t == last else 0 if t == first else 1   # a one-token subject: its last token
        elif t == n_question - 1:
            cat[t] = 5
        elif t == last + 1:
            cat[t] = 3
        elif t > last + 1:
            cat[t] = 4
    return cat


def check_trace_settings(samples: int, noise: float, window: int) -> None:
    if samples < 1:
        raise UnlearnkitError(f"causal tracing needs at least one noise sample, got samples={samples}")
    if not noise >= 0 or noise == float("inf"):
        raise UnlearnkitError(f"the noise level must be a finite number >= 0 (a multiple of the embeddings' std), "
                              f"got {noise}")
    if window < 1:
        raise UnlearnkitError(f"the restoring window must be >= 1 layer, got {window}")


def causal_trace(forward: LMForward, params: Params, ids: torch.Tensor, labels: torch.Tensor,
                 subjects: Sequence[np.ndarray], seeds: Sequence[int], samples: int = 10, noise: float = 3.0,
                 window: int = 1, positions: bool = False, corrupt_answer: bool = True,
                 score_subject: bool = False, chunk_rows: int = 512) -> TraceResult:
    """Causal traces of N stacked models on items (ids, labels) (n, L) whose subjects sit at `subjects[j]`
    (question token positions, `subject_tokens`).

    `noise`: ν in units of the std of the subject tokens' embeddings (per model); `samples` noise draws per
    item, seeded by `seeds[i]` for model i; `window`: MLP/attention layers restored together; `positions`:
    also restore at every question token (ROME's categories). `corrupt_answer`: the subject's recurrences
    in the answer are corrupted too, and restored with it (its last token at each occurrence; a subject
    token at each occurrence for `positions`); `score_subject`: count those recurrences' tokens in the
    answer probability (by default only the other answer tokens, the fact, are scored)."""
    check_trace_settings(samples, noise, window)
    n, L = ids.shape
    if len(subjects) != n or any(len(s) == 0 for s in subjects):
        raise UnlearnkitError("causal tracing needs the subject's token positions of every item")
    first_param = next(iter(params.values()))
    if len(seeds) != first_param.shape[0]:
        raise UnlearnkitError(f"{len(seeds)} seeds for {first_param.shape[0]} models")
    dev = current().device
    n_layers = len(forward.blocks)
    n_question = (labels == -100).long().cumprod(-1).sum(-1)   # question tokens precede the first label
    corrupt = torch.zeros(n, L, dtype=torch.bool)
    scored = labels.clone()
    occurrences = []   # per item: the token positions of each occurrence of the subject, the question's first
    for j, pos in enumerate(subjects):
        occ = [np.asarray(pos, dtype=np.int64)]
        if corrupt_answer:
            occ += [np.arange(r.start, r.stop) for r in _subject_repeats(ids[j], labels[j], occ[0])]
            if not score_subject:
                for r in occ[1:]:
                    scored[j, torch.as_tensor(r)] = -100
        for r in occ:
            corrupt[j, torch.as_tensor(r)] = True
        occurrences.append(occ)
    if ((scored[:, 1:] != -100).sum(-1) == 0).any():
        raise UnlearnkitError("causal tracing: an item has no answer token left to score")
    last = torch.zeros(n, L, dtype=torch.bool)
    for j, occ in enumerate(occurrences):
        last[j, [int(r[-1]) for r in occ]] = True
    embed, _ = block_modules(forward)
    embed_key = next(k for k in params if tuple(params[k].shape[1:]) == tuple(embed.weight.shape)
                     and k.endswith(("wte.weight", "embed_tokens.weight", "embed_in.weight")))
    subject_ids = torch.unique(torch.cat([ids[j, torch.as_tensor(p)] for j, p in enumerate(subjects)]))

    def windowed(layer: int) -> list[int]:
        lo = max(0, min(layer - window // 2, n_layers - window))
        return list(range(lo, min(n_layers, lo + window)))

    ids_d, scored_d, corrupt_d, last_d = ids.to(dev), scored.to(dev), corrupt.to(dev), last.to(dev)
    cats = [_categories(s, int(q)) for s, q in zip(subjects, n_question)]
    q_max = int(n_question.max())
    per_chunk = max(1, chunk_rows // samples)
    clean, corrupted, restored, by_position = [], [], [], []
    for i, seed in enumerate(seeds):
        p = {k: v[i].to(dev) for k, v in params.items()}
        std = p[embed_key][subject_ids.to(dev)].float().std()
        gen = torch.Generator().manual_seed(int(seed) * 7919 + _TAG_NOISE)
        eps = torch.randn(samples, n, L, p[embed_key].shape[-1], generator=gen).to(dev)
        eps = eps * (noise * std) * corrupt_d[None, :, :, None]
        clean_m, corr_m = torch.zeros(n), torch.zeros(n)
        rest_m = {k: torch.zeros(n_layers, n) for k in KINDS}
        pos_m = {k: torch.full((n_layers, len(POSITIONS), n), float("nan")) for k in KINDS}
        for s in range(0, n, per_chunk):
            rows = range(s, min(n, s + per_chunk))
            m = len(rows)
            x, y = ids_d[s:s + m], scored_d[s:s + m]
            states: dict = {}
            clean_m[s:s + m] = answer_probability(forward, p, x, y, record=states).cpu()
            xs, ys = x.repeat(samples, 1), y.repeat(samples, 1)
            nz = eps[:, s:s + m].reshape(samples * m, L, -1)
            reps = {key: st.repeat(samples, 1, 1) for key, st in states.items()}

            def run(kind: str | None = None, layer: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
                restore = {}
                if kind is not None:
                    mask = mask.repeat(samples, 1)
                    restore = {(kind, b): (reps[(kind, b)], mask) for b in ([layer] if kind == "block" else
                                                                             windowed(layer))}
                out = answer_probability(forward, p, xs, ys, noise=nz, restore=restore)
                return out.view(samples, m).mean(0).cpu()   # averaged over noise samples in probability

            corr_m[s:s + m] = run()
            for kind in KINDS:
                for layer in range(n_layers):
                    rest_m[kind][layer, s:s + m] = run(kind, layer, last_d[s:s + m])
                    if not positions:
                        continue
                    sums = torch.zeros(len(POSITIONS), m, dtype=torch.float64)
                    counts = torch.zeros(len(POSITIONS), m, dtype=torch.float64)
                    for t in range(q_max):
                        mask = torch.zeros(m, L, dtype=torch.bool)
                        for r, j in enumerate(rows):
                            if t not in cats[j]:
                                continue
                            offset = np.flatnonzero(occurrences[j][0] == t)
                            mask[r, [int(o[offset[0]]) for o in occurrences[j]] if len(offset) else [t]] = True
                        hit = mask.any(-1)
                        if not hit.any():
                            continue
                        pr = run(kind, layer, mask.to(dev)).double()
                        for r in hit.nonzero().flatten().tolist():
                            c = cats[rows[r]][t]
                            sums[c, r] += pr[r]
                            counts[c, r] += 1
                    pos_m[kind][layer, :, s:s + m] = (sums / counts).float()   # NaN: no token of the category
        clean.append(clean_m)
        corrupted.append(corr_m)
        restored.append(rest_m)
        by_position.append(pos_m)
    settings = {"samples": samples, "noise": noise, "window": window, "corrupt_answer": corrupt_answer,
                "score_subject": score_subject, "restored_at": "the last token of each occurrence of the subject",
                "probability": "teacher-forced answer, per-token geometric mean, averaged over noise samples"}
    return TraceResult(torch.stack(clean), torch.stack(corrupted),
                       {k: torch.stack([r[k] for r in restored]) for k in KINDS},
                       {k: torch.stack([r[k] for r in by_position]) for k in KINDS} if positions else None, settings)
