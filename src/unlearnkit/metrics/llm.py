"""Language-model unlearning metrics over per-token log-probabilities (pure functions, no model code).

Every function takes the log-probabilities a model has already assigned to the tokens of an answer,
log p(y_t | q, y_<t) for t = 1..|y| — one 1-D sequence (list, NumPy array or torch tensor) per answer —
so that the metrics can be checked by hand. Token log-probabilities must be finite and ≤ 0.

TOFU (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs", arXiv 2401.06121, §2.5),
as OpenUnlearning (github locuslab/open-unlearning, src/evals/metrics/) computes it:

- probability: exp(−mean token NLL) = P(a|q)^{1/|a|}, the length-normalised probability (TOFU's
  "probability" on the forget and retain sets is this; the two are the same number). On the
  real-authors and world-facts sets TOFU normalises over the answer options instead:
  `probability_with_options`.
- truth ratio R = P_pert / P_para, each P a geometric mean over answers of exp(−mean token NLL)
  (OpenUnlearning averages the per-answer mean NLLs, then exponentiates; so does TOFU's own code).
- forget quality: p-value of scipy's two-sample KS test between the per-item R on the forget set
  under the unlearned model and under the retain-only (oracle) model.
- model utility: harmonic mean of 9 numbers — {probability, ROUGE-L recall, truth-ratio term
  mean(max(0, 1 − R))} on the retain, real-authors and world-facts sets.

Membership inference (MUSE, Shi et al. 2024, arXiv 2407.06460; OpenUnlearning src/evals/metrics/mia/):
per-item scores signed so that HIGHER = MORE LIKELY A MEMBER (OpenUnlearning signs them the other
way, like a loss, and labels the forget set 0 — the AUC comes out the same): LOSS, zlib (Carlini et
al. 2021, "Extracting Training Data from Large Language Models"), Min-K% (Shi et al. 2024, arXiv
2310.16789), Min-K%++ (Zhang et al. 2024, arXiv 2404.02936); `mia_auc` and `privleak`.

`sequence_scores` gives the (models, items) array of mean token log-probabilities that
`unlearnkit.metrics.klom.klom` takes unchanged for sequence-level KLoM.

Memorisation (OpenUnlearning src/evals/metrics/memorization.py): `exact_memorization` (Tirumala et al.
2022) and `extraction_strength` (Carlini et al. 2021; Wang et al. 2025, ICLR, openreview wUtCieKuQU),
both from the teacher-forced top-1 hits of an answer's tokens. Further attacks: `reference_score`
(target vs reference-model loss, Carlini et al. 2021 §5.1 / MIMIR; OpenUnlearning mia/reference.py) and
`grad_norm_score` (Wang et al. 2024, arXiv 2402.17012; OpenUnlearning mia/gradnorm.py).

Conventions (`Conventions`, default `OPENUNLEARNING`): where the reference framework's code makes a
choice the formula leaves open, the pipeline follows it by default, so that numbers compare with
OpenUnlearning's; each choice can be switched (see `Conventions`) and tests/test_lm_conventions.py
computes both on the same inputs. OpenUnlearning scores all answer tokens for probability, truth ratio,
LOSS and zlib, but drops the last (EOS) prediction for Min-K%, Min-K%++, GradNorm, exact memorisation
and extraction strength (`drop_last=True` here).
"""
from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats
import torch

from .mia import auc

__all__ = [
    "MODEL_UTILITY_COMPONENTS", "OPENUNLEARNING", "Conventions", "answer_logprob_stats", "drop_last_position",
    "exact_memorization", "extraction_strength", "forget_quality", "grad_norm_score", "loss_score", "mia_auc",
    "min_k_plus_plus_score", "min_k_score", "model_utility", "privleak", "probability",
    "probability_with_options", "reference_score", "rouge_l_recall", "sequence_scores", "truth_ratio",
    "truth_ratio_forget_score", "truth_ratio_prob", "truth_ratio_retain_score", "vocab_logprob_moments",
    "zlib_score",
]

#: The 9 numbers TOFU's model utility is the harmonic mean of (OpenUnlearning configs/eval/
#: tofu_metrics/model_utility.yaml). "ra" = real authors, "wf" = world facts; their probabilities are
#: `probability_with_options`, the retain set's is plain `probability`.
MODEL_UTILITY_COMPONENTS = (
    "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE", "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio",
)

OU_EPS = 1e-10          # the 1e-10 OpenUnlearning adds to denominators
MINKPP_MIN_VAR = 1e-6   # OpenUnlearning clamps the Min-K%++ variance σ² at 1e-6 (σ ≥ 1e-3)
ONE_TOKEN = ("zero", "score")
ZLIB_TEXT = ("labels", "answer")
ES_NO_MATCH = ("openunlearning", "paper")


@dataclass(frozen=True)
class Conventions:
    """The choices that make unlearnkit's LM numbers OpenUnlearning's (the defaults) or not.

    - one_token: the token-wise metrics (Min-K%, Min-K%++, GradNorm, exact memorisation, extraction
      strength) drop an answer's last labelled prediction (EOS), as OpenUnlearning's `tokenwise_logprobs`
      / `tokenwise_vocab_logprobs` (src/evals/metrics/utils.py) do. An answer with exactly one labelled
      token then has none left: "zero" = OpenUnlearning's values (Min-K%/Min-K%++ score 0 —
      `if lp.size == 0: return 0` in mia/min_k.py —, extraction strength 0, exact memorisation undefined
      and left out of the mean, GradNorm 0: OpenUnlearning's GradNorm raises there, its empty log-prob
      tensor has no gradient); "score" = score that one token (unlearnkit's earlier choice: a real token
      is not silently worth 0).
    - zlib_text: the text zlib compresses. "labels" = the decoded labelled token ids, special tokens
      skipped (OpenUnlearning's `extract_target_texts_from_processed_data`: the text actually scored, cut
      short where the item was truncated); "answer" = the item's answer string.
    - tr_eps: the truth ratio P_pert / (P_para + tr_eps) and its forget aggregator min(R, 1/(R + tr_eps)):
      OpenUnlearning's 1e-10 (memorization.py `truth_ratio`), or 0 = the exact ratio in log space (TOFU's
      code). They part when P_para < ~1e-8 (mean NLL > ~18, after aggressive unlearning).
    - es_no_match: extraction strength when not even the last token is predicted: "openunlearning" =
      1/T (its loop variable stops at T − 1, memorization.py `extraction_strength`), "paper" = 0 (the
      definition, min over k ≤ T with the empty suffix matching at k = T).
    """

    one_token: str = "zero"
    zlib_text: str = "labels"
    tr_eps: float = OU_EPS
    es_no_match: str = "openunlearning"

    def __post_init__(self):
        for name, allowed in (("one_token", ONE_TOKEN), ("zlib_text", ZLIB_TEXT), ("es_no_match", ES_NO_MATCH)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not (isinstance(self.tr_eps, (int, float)) and 0.0 <= self.tr_eps < 1e-3):
            raise ValueError(f"tr_eps must be a small non-negative number, got {self.tr_eps!r}")


#: OpenUnlearning's conventions: the default everywhere users compare numbers with it.
OPENUNLEARNING = Conventions()


# ---------------------------------------------------------------------------------------------------
# Input checking
# ---------------------------------------------------------------------------------------------------

def _to_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().to(torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def _tokens(token_logprobs, name: str = "token_logprobs") -> np.ndarray:
    """One answer's token log-probabilities as a non-empty, finite 1-D float64 array of values ≤ 0."""
    lp = _sample(token_logprobs, name, " (one log-probability per token)", ": an answer needs at least one scored token")
    if (lp > 1e-6).any():
        raise ValueError(f"{name} must be log-probabilities (≤ 0), got max {lp.max():.4g} "
                         "(negative log-likelihoods passed by mistake?)")
    return lp


def _is_scalar(x) -> bool:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x.ndim == 0
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool)


def _answers(item, name: str) -> list[np.ndarray]:
    """One item's answers: a single token sequence, or a sequence of token sequences (several answers)."""
    if isinstance(item, (np.ndarray, torch.Tensor)):
        if item.ndim == 1:
            return [_tokens(item, name)]
        if item.ndim == 2:
            if item.shape[0] == 0:
                raise ValueError(f"{name} has no answers")
            return [_tokens(row, name) for row in item]
        raise ValueError(f"{name} must be one answer (1-D) or several answers, got shape {tuple(item.shape)}")
    if not isinstance(item, Sequence) or isinstance(item, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of token log-probabilities or of answers")
    if len(item) == 0:
        raise ValueError(f"{name} is empty")
    if all(_is_scalar(x) for x in item):
        return [_tokens(item, name)]
    return [_tokens(a, f"{name}[{j}]") for j, a in enumerate(item)]


def _mean_lp(item, name: str) -> float:
    """Mean over an item's answers of their mean token log-probability (= −mean of the avg NLLs)."""
    return float(np.mean([a.mean() for a in _answers(item, name)]))


def _items(x, name: str) -> Sequence:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        if x.ndim < 2:
            raise ValueError(f"{name} must hold one entry per item, got shape {tuple(x.shape)}")
        return list(x)
    if not isinstance(x, Sequence) or isinstance(x, (str, bytes)):
        raise ValueError(f"{name} must be a sequence with one entry per item")
    if len(x) == 0:
        raise ValueError(f"{name} has no items")
    return x


def _sample(x, name: str, shape_hint: str = "", empty_hint: str = "") -> np.ndarray:
    """`x` as a non-empty, finite 1-D float64 array (the hints finish the error messages)."""
    try:
        a = _to_numpy(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a 1-D sequence of numbers: {e}") from None
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D{shape_hint}, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty{empty_hint}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _check_k(k: float) -> float:
    k = float(k)
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must lie in (0, 1], got {k}")
    return k


# ---------------------------------------------------------------------------------------------------
# Per-answer statistics and TOFU probability
# ---------------------------------------------------------------------------------------------------

def answer_logprob_stats(token_logprobs) -> tuple[float, float, int]:
    """(sum, mean, length) of one answer's token log-probabilities.

    sum = log P(a|q), mean = log P(a|q) / |a| = −(OpenUnlearning's `avg_loss`), length = |a|.
    """
    lp = _tokens(token_logprobs)
    return float(lp.sum()), float(lp.mean()), int(lp.size)


def probability(token_logprobs) -> float:
    """TOFU's normalised probability of one answer: P(a|q)^{1/|a|} = exp(mean token log-prob).

    This is exactly OpenUnlearning's `exp(−avg_loss)` (`evaluate_probability`: the summed token NLL
    divided by the number of answer tokens) — exp(−mean NLL) and the length-normalised probability of
    TOFU §2.5.1 are the same number. TOFU reports its mean over the items of a split.
    """
    return math.exp(answer_logprob_stats(token_logprobs)[1])


def probability_with_options(correct_logprobs, wrong_logprobs_list, eps: float = OU_EPS) -> np.ndarray:
    """Per-item TOFU probability on the real-authors / world-facts sets: the correct answer's normalised
    probability over the sum of those of all the options, p_c / (p_c + Σ_j p_wrong_j + eps).

    OpenUnlearning `probability_w_options` (these enter model utility as `ra/wf_Q_A_Prob_normalised`).
    correct_logprobs: one token sequence per item; wrong_logprobs_list: per item, a list of token
    sequences (the wrong options). Returns (items,).
    """
    correct = _items(correct_logprobs, "correct_logprobs")
    wrong = _items(wrong_logprobs_list, "wrong_logprobs_list")
    if len(correct) != len(wrong):
        raise ValueError(f"{len(correct)} correct answers but {len(wrong)} items of wrong answers")
    out = np.empty(len(correct))
    for i, (c, w) in enumerate(zip(correct, wrong)):
        pc = math.exp(_tokens(c, f"correct_logprobs[{i}]").mean())
        pw = sum(math.exp(a.mean()) for a in _answers(w, f"wrong_logprobs_list[{i}]"))
        out[i] = pc / (pc + pw + eps)
    return out


# ---------------------------------------------------------------------------------------------------
# Truth ratio and forget quality
# ---------------------------------------------------------------------------------------------------

def truth_ratio(para_logprobs, perturbed_logprobs_list, eps: float = OU_EPS) -> np.ndarray:
    """Per-item TOFU truth ratio R = P_pert / P_para, for (items,) → (items,).

    P_pert = exp(mean over the perturbed answers of their mean token log-prob), i.e. the geometric mean
    of the per-answer normalised probabilities exp(−mean NLL); P_para likewise over the paraphrased
    answer(s) (TOFU has one paraphrase and 5 perturbed answers per forget/retain item). For the
    real-authors and world-facts sets, OpenUnlearning passes the original answer as the "paraphrase".

    para_logprobs: per item, one token sequence (or a list of them); perturbed_logprobs_list: per item,
    a list of token sequences (one per perturbed answer).

    Paper vs code: TOFU §2.5.1 writes the numerator as the mean of the perturbed answers' normalised
    probabilities (an arithmetic mean, as we read it); both TOFU's reference code
    (aggregate_eval_stat.py: mean of the avg losses, then exp) and OpenUnlearning (`truth_ratio`:
    `aggregate_to_1D` of the avg losses, then exp) use the geometric mean. We follow the code.

    Default (OpenUnlearning, memorization.py `truth_ratio`): exp(−L_pert) / (exp(−L_para) + 1e-10).
    eps=0 computes the exact ratio in log space, R = exp(mean lp_pert − mean lp_para), as TOFU's code
    does. The two differ only when P_para < ~1e-8 (mean NLL > ~18, e.g. after gradient ascent): there
    OpenUnlearning's R collapses towards P_pert / 1e-10 (`Conventions.tr_eps`).
    """
    lp_para, lp_pert = _truth_logprobs(para_logprobs, perturbed_logprobs_list)
    if eps == 0.0:
        return np.exp(lp_pert - lp_para)
    return np.exp(lp_pert) / (np.exp(lp_para) + eps)


def _truth_logprobs(para_logprobs, perturbed_logprobs_list) -> tuple[np.ndarray, np.ndarray]:
    """Per item, (log P_para, log P_pert): means over the answers of their mean token log-probabilities."""
    para = _items(para_logprobs, "para_logprobs")
    pert = _items(perturbed_logprobs_list, "perturbed_logprobs_list")
    if len(para) != len(pert):
        raise ValueError(f"{len(para)} paraphrased items but {len(pert)} perturbed items")
    lp_para = np.array([_mean_lp(a, f"para_logprobs[{i}]") for i, a in enumerate(para)])
    lp_pert = np.array([_mean_lp(a, f"perturbed_logprobs_list[{i}]") for i, a in enumerate(pert)])
    return lp_para, lp_pert


def truth_ratio_prob(para_logprobs, perturbed_logprobs_list, eps: float = OU_EPS) -> np.ndarray:
    """Per-item truth ratio in OpenUnlearning's `prob_mean` form, P_para / (P_para + P_pert + 1e-10), for
    (items,) → (items,); its aggregate is the plain mean over items.

    OpenUnlearning src/evals/metrics/memorization.py `truth_ratio` with aggregator="prob_mean" (added
    Dec 2025, commit d3d7cf9, #163: "extent of knowledge" of the OpenUnlearning paper's meta-evaluation,
    Dorna et al. 2025, arXiv 2506.12618). P_para and P_pert as in `truth_ratio` (geometric means of the
    answers' normalised probabilities). In [0, 1): 1 = only the correct (paraphrased) answer is likely,
    ½ = correct and perturbed answers equally likely (what a model that never saw the item shows).
    eps=0 gives the exact 1 / (1 + R) in log space.
    """
    lp_para, lp_pert = _truth_logprobs(para_logprobs, perturbed_logprobs_list)
    if eps == 0.0:
        return 1.0 / (1.0 + np.exp(lp_pert - lp_para))
    p_para, p_pert = np.exp(lp_para), np.exp(lp_pert)
    return p_para / (p_para + p_pert + eps)


def _ratios(truth_ratios, name: str = "truth_ratios") -> np.ndarray:
    r = _sample(truth_ratios, name)
    if (r < 0).any():
        raise ValueError(f"{name} must be non-negative")
    return r


def truth_ratio_forget_score(truth_ratios, eps: float = OU_EPS) -> float:
    """TOFU's truth-ratio statistic on the forget set: mean over items of min(R, 1/R).

    OpenUnlearning aggregator `closer_to_1_better`, min(R, 1/(R + 1e-10)) by default (eps=0: the exact
    min(R, 1/R)): 1 when perturbed and paraphrased answers are equally likely, which is what a model that
    never saw the forget set should show; smaller either way. The eps changes a term by under eps relative
    (1/(R + eps) is taken only where R ≥ 1), so a row aggregates with the default whatever `tr_eps` the
    ratios were computed with: only `truth_ratio` itself parts the conventions.
    """
    r = _ratios(truth_ratios)
    with np.errstate(divide="ignore"):
        return float(np.mean(np.minimum(r, 1.0 / (r + eps))))


def truth_ratio_retain_score(truth_ratios) -> float:
    """TOFU's truth-ratio term of model utility: mean over items of max(0, 1 − R).

    OpenUnlearning aggregator `true_better` (retain, real-authors and world-facts sets): higher when the
    correct (paraphrased) answer is more likely than the perturbed ones, i.e. R < 1; clipped at 0.
    """
    return float(np.mean(np.maximum(0.0, 1.0 - _ratios(truth_ratios))))


def forget_quality(truth_ratios_unlearned, truth_ratios_oracle) -> float:
    """TOFU forget quality: p-value of scipy's two-sample KS test between the per-item truth ratios on
    the forget set under the unlearned model and under the retain-only (oracle) model.

    OpenUnlearning `ks_test` (`scipy.stats.ks_2samp(...).pvalue`, default method). Higher is better;
    the oracle against itself scores 1. TOFU's reference code tests 1/R instead of R — the KS statistic
    is invariant under strictly monotone maps, so the p-value is the same.
    """
    u = _sample(truth_ratios_unlearned, "truth_ratios_unlearned")
    o = _sample(truth_ratios_oracle, "truth_ratios_oracle")
    return float(scipy.stats.ks_2samp(u, o).pvalue)


# ---------------------------------------------------------------------------------------------------
# ROUGE-L recall and model utility
# ---------------------------------------------------------------------------------------------------

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def _rouge_tokens(text: str, alnum: bool) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}")
    text = text.lower()
    if alnum:
        text = _NON_ALNUM.sub(" ", text)
    return text.split()


def _lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l_recall(prediction: str, reference: str, alnum: bool = False) -> float:
    """ROUGE-L recall (Lin 2004): LCS(prediction, reference) / |reference|, over tokens.

    Tokens: the lowercased text split on whitespace (punctuation stays attached: "mat." ≠ "mat").
    The rouge_score package that TOFU and OpenUnlearning use (`RougeScorer(["rougeL"],
    use_stemmer=True)`, `rougeL_recall` = `scorer.score(reference, generation).recall`) instead lowercases,
    replaces every run of characters outside [a-z0-9] by a space (dropping punctuation and non-ASCII
    letters) and Porter-stems tokens longer than 3 characters. alnum=True applies that character rule;
    there is no stemming here, so scores can still be lower than rouge_score's where only inflections
    differ. An empty prediction or reference scores 0, as in rouge_score.
    """
    pred, ref = _rouge_tokens(prediction, alnum), _rouge_tokens(reference, alnum)
    if not pred or not ref:
        return 0.0
    return _lcs_length(pred, ref) / len(ref)


def rouge_l_f1(prediction: str, reference: str, alnum: bool = False) -> float:
    """ROUGE-L F1 (Lin 2004): the harmonic mean of LCS/|prediction| and LCS/|reference|, over the tokens of
    `rouge_l_recall` (same `alnum` rule). MUSE's VerbMem and KnowMem score with it (Shi et al. 2024, "MUSE:
    Machine Unlearning Six-Way Evaluation for Language Models", arXiv 2407.06460, §3: VerbMem =
    mean ROUGE(f(x[:l]), x[l+1:]), KnowMem = mean ROUGE(f(q), a); OpenUnlearning `rougeL_f1`). Empty
    texts or no common token score 0."""
    pred, ref = _rouge_tokens(prediction, alnum), _rouge_tokens(reference, alnum)
    common = _lcs_length(pred, ref) if pred and ref else 0
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def verbatim_prompt(question: str, answer: str) -> tuple[str, str] | None:
    """MUSE's VerbMem on a question–answer item: the prompt is the question and the answer's first half
    (its first ⌈k/2⌉ of k words), the reference the rest (MUSE prompts with a forget text's first l tokens
    and compares the continuation). None for an answer of one word: nothing is left to continue."""
    words = answer.split()
    if len(words) < 2:
        return None
    half = (len(words) + 1) // 2
    return f"{question} {' '.join(words[:half])}", " ".join(words[half:])


def model_utility(values) -> float:
    """TOFU model utility: the harmonic mean of its component scores (OpenUnlearning `hm_aggregate`,
    scipy.stats.hmean), normally the 9 of MODEL_UTILITY_COMPONENTS — {probability, ROUGE-L recall,
    truth-ratio term max(0, 1 − R)} on the retain, real-authors and world-facts sets.

    values: a sequence of numbers, or a mapping name → number. All must be finite and ≥ 0. If any is 0
    the harmonic mean is 0 (the limit, and what scipy returns): one destroyed capability zeroes utility.
    """
    if isinstance(values, Mapping):
        values = list(values.values())
    v = _sample(values, "values")
    if (v < 0).any():
        raise ValueError("model utility components must be non-negative")
    if (v == 0).any():
        return 0.0
    return float(v.size / np.sum(1.0 / v))


# ---------------------------------------------------------------------------------------------------
# Membership-inference scores (higher = more likely a member) and their AUC
# ---------------------------------------------------------------------------------------------------

def loss_score(token_logprobs) -> float:
    """LOSS attack (Yeom et al. 2018) score: the mean token log-probability = −(mean token NLL).

    OpenUnlearning's `LOSSAttack` returns the mean NLL (`avg_loss`, loss-like); we negate it so that
    higher = more likely a member.
    """
    return answer_logprob_stats(token_logprobs)[1]


def zlib_score(token_logprobs, text: str) -> float:
    """zlib attack (Carlini et al. 2021, §5.1): −(mean token NLL) / len(zlib.compress(text.encode("utf-8"))).

    The ratio of the model's log-perplexity to the zlib "entropy" (compressed length in bytes) of the
    text, negated so that higher = more likely a member. OpenUnlearning's `ZLIBAttack`
    (src/evals/metrics/mia/zlib.py) uses the mean NLL of all the labelled tokens and, as `text`, those
    tokens decoded with special tokens skipped (`Conventions.zlib_text` = "labels"; on an item cut at the
    maximum length that is the part scored, not the whole answer).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    return loss_score(token_logprobs) / len(zlib.compress(text.encode("utf-8")))


def _mean_lowest(scores: np.ndarray, k: float) -> float:
    n = max(1, int(len(scores) * k))  # OpenUnlearning's count: floor(k·T), at least 1
    return float(np.mean(np.sort(scores)[:n]))


def drop_last_position(values, one_token: str = "zero") -> np.ndarray:
    """An answer's per-token values without the last labelled position (the EOS prediction), the positions
    OpenUnlearning's token-wise metrics use (src/evals/metrics/utils.py `tokenwise_logprobs`: labelled
    indices `[:-1]`). A one-token answer keeps nothing (one_token="zero", OpenUnlearning) or its one token
    (one_token="score"). See `Conventions.one_token`."""
    if one_token not in ONE_TOKEN:
        raise ValueError(f"one_token must be one of {', '.join(ONE_TOKEN)}, got {one_token!r}")
    v = np.asarray(values)
    if v.ndim != 1:
        raise ValueError(f"expected one answer's per-token values (1-D), got shape {v.shape}")
    return v[:-1] if v.size > 1 or one_token == "zero" else v


def min_k_score(token_logprobs, k: float = 0.4, drop_last: bool = False, one_token: str = "zero") -> float:
    """Min-K% Prob (Shi et al. 2024, arXiv 2310.16789, §3): the mean of the lowest k fraction of token
    log-probabilities, over max(1, ⌊k·T⌋) tokens. Higher = more likely a member.

    k = 0.4 as in OpenUnlearning's TOFU config (`mia_min_k.yaml`); the paper's default is 20%.
    OpenUnlearning's `MinKProbAttack` (src/evals/metrics/mia/min_k.py) returns the negation (loss-like).
    drop_last=True scores OpenUnlearning's positions (`drop_last_position`: without the EOS prediction);
    an answer with no token left scores 0, as its attack returns for an empty sequence.
    """
    lp, k = _tokens(token_logprobs), _check_k(k)
    if drop_last:
        lp = drop_last_position(lp, one_token)
        if lp.size == 0:
            return 0.0
    return _mean_lowest(lp, k)


def vocab_logprob_moments(vocab_logprobs) -> tuple[np.ndarray, np.ndarray]:
    """μ_t, σ_t for Min-K%++ from full next-token log-probabilities (T, V) → ((T,), (T,)).

    μ_t = E_{z∼p(·|x<t)}[log p(z|x<t)], σ_t² = E[(log p(z|x<t))²] − μ_t² (Zhang et al. 2024, eq. 3;
    the expectation is under the model's next-token distribution, not uniform over the vocabulary).
    Zero-probability tokens (log p = −inf) contribute 0. Returns σ_t (not the variance).
    """
    lp = _to_numpy(vocab_logprobs)
    if lp.ndim != 2 or lp.shape[0] == 0 or lp.shape[1] == 0:
        raise ValueError(f"vocab_logprobs must be (tokens, vocab), got shape {lp.shape}")
    if np.isnan(lp).any() or (lp == np.inf).any():
        raise ValueError("vocab_logprobs contains NaN or +inf")
    p = np.exp(lp)
    if not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise ValueError("each row of vocab_logprobs must be a log-softmax (probabilities summing to 1)")
    finite = np.isfinite(lp)
    plp = np.where(finite, p * np.where(finite, lp, 0.0), 0.0)
    plp2 = np.where(finite, plp * np.where(finite, lp, 0.0), 0.0)
    mu = plp.sum(1)
    var = np.maximum(plp2.sum(1) - mu ** 2, 0.0)
    return mu, np.sqrt(var)


def min_k_plus_plus_score(token_logprobs, mu, sigma, k: float = 0.4, drop_last: bool = False,
                          one_token: str = "zero") -> float:
    """Min-K%++ (Zhang et al. 2024, arXiv 2404.02936, eq. 3–4): standardise each token log-probability,
    s_t = (log p(x_t|x<t) − μ_t) / σ_t, with μ_t, σ_t the mean and standard deviation of log p(z|x<t)
    for z drawn from the model's next-token distribution at position t (`vocab_logprob_moments`); the
    score is the mean of the lowest k fraction of s_t (max(1, ⌊k·T⌋) tokens). Higher = more likely a
    member (OpenUnlearning's `MinKPlusPlusAttack` returns the negation).

    As OpenUnlearning does (src/evals/metrics/mia/min_k_plus_plus.py), σ_t² is clamped at 1e-6
    (σ_t ≥ 1e-3) before dividing; the paper's code does not clamp. drop_last as in `min_k_score`
    (μ and σ are given for every token and cut with it).
    """
    lp = _tokens(token_logprobs)
    mu = _sample(mu, "mu")
    sigma = _sample(sigma, "sigma")
    if mu.shape != lp.shape or sigma.shape != lp.shape:
        raise ValueError(f"mu {mu.shape} and sigma {sigma.shape} must match token_logprobs {lp.shape}")
    if (sigma < 0).any():
        raise ValueError("sigma must be non-negative (a standard deviation, not a log-variance)")
    k = _check_k(k)
    if drop_last:
        lp, mu, sigma = (drop_last_position(a, one_token) for a in (lp, mu, sigma))
        if lp.size == 0:
            return 0.0
    s = (lp - mu) / np.sqrt(np.maximum(sigma ** 2, MINKPP_MIN_VAR))
    return _mean_lowest(s, k)


def reference_score(target_logprobs, reference_logprobs) -> float:
    """Reference-model attack (Carlini et al. 2021, §5.1, "comparing to other neural language models";
    MIMIR's `ReferenceAttack`): the target model's mean token log-probability minus a reference model's
    on the same answer, = −(L_target − L_ref) with L the mean token NLL over all labelled tokens.

    OpenUnlearning src/evals/metrics/mia/reference.py returns L_target − L_ref (loss-like; we negate:
    higher = more likely a member). Carlini et al. compare log-perplexities by their ratio; MIMIR and
    OpenUnlearning by this difference, which we follow. Which model serves as reference is the caller's
    choice (OpenUnlearning's TOFU/MUSE configs: the retain-only "retain90"/"retrain" model).
    """
    return loss_score(target_logprobs) - loss_score(reference_logprobs)


GRADNORM_NORMS = (1, 2, math.inf)  # the p-norms OpenUnlearning accepts


def grad_norm_score(grads: Iterable, p: float = 2) -> float:
    """GradNorm attack (Wang et al. 2024, "Pandora's White-Box", arXiv 2402.17012; MIMIR): minus the mean
    over the model's parameter tensors θ_k of ‖∂L/∂θ_k‖_p, L the answer's mean token NLL. Higher = more
    likely a member (a memorised answer sits where the loss is flat).

    As OpenUnlearning's `GradNormAttack` (src/evals/metrics/mia/gradnorm.py, p = 2 in its configs), which
    returns the mean of the per-tensor norms (not the norm of the whole gradient) and computes L without
    the EOS prediction (`tokenwise_logprobs`); we negate it. grads: one array or tensor per parameter
    tensor (each parameter once, tied weights included once, as `model.parameters()` lists them).
    """
    if p not in GRADNORM_NORMS:
        raise ValueError(f"p must be 1, 2 or inf, got {p!r}")
    norms = [np.linalg.norm(_to_numpy(g).ravel(), ord=p) for g in grads]
    if not norms:
        raise ValueError("grads is empty: a gradient per parameter tensor is needed")
    if not np.isfinite(norms).all():
        raise ValueError("grads contain NaN or inf")
    return -float(np.mean(norms))


# ---------------------------------------------------------------------------------------------------
# Memorisation: exact memorisation and extraction strength from teacher-forced top-1 hits
# ---------------------------------------------------------------------------------------------------

def _hits(hits, drop_last: bool, one_token: str) -> np.ndarray:
    h = _to_numpy(hits)
    if h.ndim != 1 or h.size == 0:
        raise ValueError(f"hits must be one answer's non-empty 1-D top-1 hits, got shape {h.shape}")
    if not np.isin(h, (0.0, 1.0)).all():
        raise ValueError("hits must be booleans (the label is the model's top-1 prediction)")
    h = h.astype(bool)
    return drop_last_position(h, one_token) if drop_last else h


def exact_memorization(hits, drop_last: bool = False, one_token: str = "zero") -> float:
    """Exact memorisation (Tirumala et al. 2022, NeurIPS, "Memorization without overfitting"): the fraction
    of an answer's tokens that are the model's top-1 prediction given the question and the true answer
    prefix (teacher forcing). hits[t] = (argmax_z p(z | q, y_<t) == y_t), one per labelled token.

    OpenUnlearning src/evals/metrics/memorization.py `exact_memorization` uses its token-wise positions
    (drop_last=True: without the EOS prediction); an answer with no position left is undefined there
    (None, left out of the mean): NaN here.
    """
    h = _hits(hits, drop_last, one_token)
    return float(h.mean()) if h.size else math.nan


def extraction_strength(hits, drop_last: bool = False, one_token: str = "zero",
                        no_match: str = "openunlearning") -> float:
    """Extraction strength (Carlini et al. 2021; for unlearning Wang et al. 2025, ICLR, openreview
    wUtCieKuQU): ES = 1 − k*/T, k* the smallest k such that, given the question and y_<k, greedy decoding
    reproduces the rest y_≥k. With teacher forcing that is: every hit from k on is true, so
    ES = (length of the run of hits that ends the answer) / T — the fraction of the answer, counted from
    its end, the model reproduces from a prefix.

    OpenUnlearning src/evals/metrics/memorization.py `extraction_strength` (drop_last=True: without the
    EOS prediction; an answer with no position left scores 0). Its loop over k = 0..T−1 leaves k = T − 1
    when no suffix matches, so it scores 1/T where the definition gives 0 (k* = T, the empty suffix):
    no_match="openunlearning" (default) or "paper" (`Conventions.es_no_match`).
    """
    if no_match not in ES_NO_MATCH:
        raise ValueError(f"no_match must be one of {', '.join(ES_NO_MATCH)}, got {no_match!r}")
    h = _hits(hits, drop_last, one_token)
    if h.size == 0:
        return 0.0
    misses = np.flatnonzero(~h)
    run = h.size - (misses[-1] + 1) if misses.size else h.size
    if run == 0 and no_match == "openunlearning":
        run = 1
    return run / h.size


def mia_auc(member_scores, nonmember_scores) -> float:
    """ROC AUC of separating members (e.g. the forget set) from non-members (a held-out set) by a score
    that is higher for members (`mia.auc`: sklearn's `roc_auc_score` with members labelled 1).

    1 = members perfectly identified, 0.5 = indistinguishable. OpenUnlearning (`mia.utils.mia_auc`)
    labels the forget set 0 and uses loss-like scores; negating both gives this same number.
    """
    m = _sample(member_scores, "member_scores")
    n = _sample(nonmember_scores, "nonmember_scores")
    return float(auc(m, n))


def privleak(auc_unlearned: float, auc_oracle: float, eps: float = OU_EPS) -> float:
    """PrivLeak (MUSE, Shi et al. 2024, arXiv 2407.06460, §3), as OpenUnlearning's `privleak` computes it
    from the MIA AUCs above (forget vs holdout): with a = 1 − AUC (MUSE reports AUC the other way round),

        privleak = (a_unlearned − a_oracle) / (a_oracle + 1e-10) × 100
                 ≈ (AUC_oracle − AUC_unlearned) / (1 − AUC_oracle) × 100.

    In percent; 0 is ideal (as leaky as the retrained oracle). Negative = under-unlearned (the forget set
    still looks more like members than under the oracle; AUC_unlearned = 1 against a 0.5 oracle reads
    −100), positive = over-unlearned. OpenUnlearning's TOFU config uses the Min-K% AUC and falls back
    to auc_oracle = 0.5 when no oracle logs are given.
    """
    u, o = float(auc_unlearned), float(auc_oracle)
    for name, v in (("auc_unlearned", u), ("auc_oracle", o)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be an AUC in [0, 1], got {v}")
    score, ref = 1.0 - u, 1.0 - o
    return (score - ref) / (ref + eps) * 100.0


# ---------------------------------------------------------------------------------------------------
# Sequence-level KLoM input
# ---------------------------------------------------------------------------------------------------

def sequence_scores(token_logprobs_per_model) -> np.ndarray:
    """Mean token log-probability per model and item: [models][items] token sequences → (models, items).

    The sequence-level score that replaces the classifier margin in KLoM (pass the unlearned and the
    oracle arms' arrays to `unlearnkit.metrics.klom.klom` unchanged). Every model must cover the same
    items.
    """
    models = _items(token_logprobs_per_model, "token_logprobs_per_model")
    rows = []
    for i, items in enumerate(models):
        items = _items(items, f"token_logprobs_per_model[{i}]")
        if rows and len(items) != len(rows[0]):
            raise ValueError(f"model {i} covers {len(items)} items, model 0 covers {len(rows[0])}")
        rows.append([_tokens(t, f"token_logprobs_per_model[{i}][{j}]").mean() for j, t in enumerate(items)])
    return np.array(rows, dtype=np.float64)
