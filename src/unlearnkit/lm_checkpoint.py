"""Unlearn a user's own Hugging Face causal LM with their own question–answer data.

`unlearn_checkpoint` loads a local checkpoint directory (never downloads, never writes to it), runs
any LM method on it exactly as the benchmark does (the same loss files, the same engine, N = 1),
scores the forget and retain items before and after, and saves the unlearned model with
`save_pretrained` (and the tokenizer beside it) to a new directory, written under a temporary name
and renamed only when complete. RWKU-style probes (`data.probes`) exist only for tofu-synth's own
authors: a checkpoint run scores probes only from the user's file (`probes`: question + short answer per
line, ROUGE-L recall of the greedy generation before and after).

Every mistake a user can make (arguments, --out, data files, tokenizer, weights, free space) is
refused with one `UnlearnkitError` line before any unlearning compute, so an hour of work is never
lost to a typo; a failure while saving (a disk filled meanwhile) leaves nothing behind either.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.utils import logging as hf_logging

from .data.tofu_synth import QA, from_jsonl
from .errors import Diverged, UnlearnkitError, option
from .files import check_writable, disk_full, nearest_existing
from .lm.evaluate import probe_scores, score_items
from .lm.generate import load_into
from .lm.lora import LoraSpec
from .lm.model import LMForward
from .lm.tokenizer import encode_pairs
from .methods.base import make_hparams
from .methods.lm import LM_REGISTRY, LMContext
from .methods.lm.base import check_lora
from .runs import MAX_SEED

# methods that cannot unlearn a checkpoint, and why
_FROM_SCRATCH = "trains models from scratch with the training recipe and data of the model, which a checkpoint lacks"
_AT_INFERENCE = ("changes how the model runs, not its weights: a saved checkpoint would be the original (run it "
                 "on an LM task with `unlearnkit run`)")
NOT_FOR_CHECKPOINTS = {"retrain": _FROM_SCRATCH, "filter": _FROM_SCRATCH, "era": _FROM_SCRATCH,
                       "era-control": _FROM_SCRATCH, "guard": _AT_INFERENCE, "sae-clamp": _AT_INFERENCE}
# what a fast tokenizer is built from: its own JSON, or the vocabulary files it is converted from
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model")


def _weight_files(model_dir: Path) -> list[Path]:
    """The files transformers loads weights from: safetensors if any (it prefers them), else pickles."""
    return sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))


def _check_dirs(model_dir: Path, out: Path) -> None:
    if not (model_dir / "config.json").is_file():
        raise UnlearnkitError(f"{option('model_dir', str(model_dir))} is not a Hugging Face checkpoint (no "
                              "config.json)")
    m, o = model_dir.resolve(), out.resolve()
    if o == m or m in o.parents or o in m.parents:
        raise UnlearnkitError(f"{option('out', str(out))} must be a new directory outside "
                              f"{option('model_dir', str(model_dir))}: the checkpoint "
                              "is never overwritten")
    if out.exists() and not out.is_dir():
        raise UnlearnkitError(f"{option('out', str(out))} is an existing file; choose a new directory")
    if out.exists() and any(out.iterdir()):
        raise UnlearnkitError(f"{option('out', str(out))} already exists and is not empty; choose a new directory")
    check_writable(out.parent, f"{option('out', str(out))} cannot be created")
    base = nearest_existing(out.parent)  # the missing ancestors are created when saving
    need, free = sum(f.stat().st_size for f in _weight_files(model_dir)), shutil.disk_usage(base).free
    if need > free:
        raise UnlearnkitError(f"{option('out', str(out))}: the unlearned model needs about {need / 2**20:.1f} MiB "
                              f"but only {free / 2**20:.1f} MiB are free there; free space or choose another disk")


def load_causal_lm(model_dir: Path) -> tuple[PreTrainedModel, object]:
    """The checkpoint's model (eager attention, eval mode) and fast tokenizer, checked to fit together.

    The tokenizer comes first: it is cheap, and without its files transformers builds an empty one
    that would fail only much later. Pickled weights are read with weights_only=True: never run."""
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        raise UnlearnkitError(f"no tokenizer in {model_dir}: none of {', '.join(TOKENIZER_FILES)} is there; save the "
                              "model's tokenizer beside it with tokenizer.save_pretrained(DIR)")
    try:
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise UnlearnkitError(f"cannot load the tokenizer in {model_dir}: {str(e).splitlines()[0]}") from None
    if not getattr(tok, "is_fast", False):
        raise UnlearnkitError(f"the tokenizer in {model_dir} is not a fast (tokenizers-backed) tokenizer")
    if not tok("a b", add_special_tokens=False)["input_ids"]:
        raise UnlearnkitError(f"the tokenizer in {model_dir} encodes text to no tokens (an empty vocabulary); save "
                              "the model's own tokenizer there with tokenizer.save_pretrained(DIR)")
    try:  # the config first: its errors mean "not a causal LM", the weights' errors below mean "corrupt"
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except (ValueError, KeyError) as e:
        raise UnlearnkitError(f"{model_dir} is not a causal language model: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise UnlearnkitError(f"cannot load a model from {model_dir}: {str(e).splitlines()[0]}") from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:  # an encoder's config (BERT) has no causal-LM head
        raise UnlearnkitError(f"{model_dir} is not a causal language model: its config is {type(config).__name__}, "
                              "which has no causal-LM head")
    try:  # float32 whatever the stored dtype: Adam's small updates vanish in bf16/fp16
        model = AutoModelForCausalLM.from_pretrained(model_dir, config=config, local_files_only=True,
                                                     attn_implementation="eager", dtype=torch.float32,
                                                     weights_only=True)
    except OSError as e:
        raise UnlearnkitError(f"cannot load a model from {model_dir}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 — garbage bytes fail the (weights-only) unpickler in any way it can
        # (a missing memo key, an empty stack, a bad UTF-8 string, a safetensors header error)
        reason = (str(e).splitlines() or [""])[0].split(". ")[0] or "unexpected end of file"
        raise UnlearnkitError(f"the weights in {model_dir} ({', '.join(f.name for f in _weight_files(model_dir))}) "
                              f"are truncated, corrupt or not plain tensors ({reason}); re-save or re-download "
                              "the checkpoint") from None
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) > rows:
        raise UnlearnkitError(f"tokenizer mismatch: the tokenizer in {model_dir} has {len(tok)} tokens but the model's "
                              f"embedding has {rows} rows (a tokenizer of another model?)")
    if tok.eos_token_id is None:
        raise UnlearnkitError(f"the tokenizer in {model_dir} defines no EOS token; answers need one to end")
    _check_causal(model)
    return model.eval(), tok


@torch.no_grad()
def _check_causal(model: PreTrainedModel) -> None:
    """A causal LM's logits at position t never depend on later tokens: check it on one input."""
    vocab = model.get_input_embeddings().weight.shape[0]
    x = torch.arange(8).remainder(vocab)[None]
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % vocab
    a, b = (model(ids, use_cache=False).logits[0, :-1] for ids in (x, y))
    if not torch.allclose(a, b, atol=1e-4):
        raise UnlearnkitError(f"{type(model).__name__} is not causal: its predictions depend on later tokens")


PROBES_HELP = ("a JSONL of probes, one {\"question\", \"answer\"} object per line, the answer the short fact the "
               "question asks for")


def unlearn_checkpoint(model_dir, forget_file, retain_file, method: str, out, overrides: dict | None = None,
                       max_len: int = 128, seed: int = 0, probes=None, lora: int = 0) -> dict:
    """Unlearn `forget_file`'s QAs from the checkpoint in `model_dir`, keeping `retain_file`'s; save to `out`.
    `probes`: a probe file (PROBES_HELP) scored before and after; "" (asked for without one) is refused.
    `lora`: a rank: the method trains PEFT LoRA adapters, merged into the saved weights (0: every weight)."""
    model_dir, out = Path(model_dir), Path(out)
    hf_logging.disable_progress_bar()
    if method not in LM_REGISTRY or method in NOT_FOR_CHECKPOINTS:
        usable = [m for m in LM_REGISTRY if m not in NOT_FOR_CHECKPOINTS]
        why = f" (it {NOT_FOR_CHECKPOINTS[method]})" if method in NOT_FOR_CHECKPOINTS else ""
        raise UnlearnkitError(f"method {method!r} cannot unlearn a checkpoint{why}; use one of {', '.join(usable)}")
    hp = make_hparams(method, overrides or {}, LM_REGISTRY)
    spec = LoraSpec(lora) if lora else None
    check_lora([method] if spec else [], LM_REGISTRY)
    if not isinstance(max_len, numbers.Integral) or max_len < 2:
        raise UnlearnkitError(f"{option('max_len')} must be a whole number of tokens, at least 2 (a question token "
                              f"and the answer's end), got {max_len!r}")
    if not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise UnlearnkitError(f"{option('seed')} must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    if probes is not None and not str(probes).strip():
        raise UnlearnkitError(f"{option('probes')} needs probe data: tofu-synth's RWKU-style probes exist only for "
                              f"its own authors, a checkpoint has none; give {option('probes', 'FILE')}, {PROBES_HELP}")
    _check_dirs(model_dir, out)
    forget, retain = from_jsonl(forget_file), from_jsonl(retain_file)
    both = {(qa.question, qa.answer) for qa in forget} & {(qa.question, qa.answer) for qa in retain}
    if both:  # a pair both forgotten and kept: the objectives cancel on it and its scores mean nothing
        raise UnlearnkitError(f"{len(both)} question–answer pair(s) are in both the forget file and the retain file "
                              f"(e.g. {next(iter(sorted(both)))[0]!r}); a pair is forgotten or retained, not both")
    probe_items = from_jsonl(probes) if probes is not None else ()
    model, hf_tok = load_causal_lm(model_dir)
    tok = hf_tok.backend_tokenizer
    eos = hf_tok.eos_token_id
    pad = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else eos
    max_len = min(max_len, getattr(model.config, "max_position_embeddings", None) or max_len)
    items: tuple[QA, ...] = forget + retain
    tokens = encode_pairs(tok, items, [qa.answer for qa in items], max_len, (pad, eos))
    last = tokens[1][:, -1]
    cut = [f"{'forget' if i < len(forget) else 'retain'} item {qa.id}" for i, qa in enumerate(items)
           if (last[i] != -100 and last[i] != eos) or not (tokens[1][i] != -100).any()]
    if cut:  # an answer cut short (EOS lost) or gone would be trained and scored as something else
        raise UnlearnkitError(f"{len(cut)} question+answer pair(s) exceed {option('max_len', max_len)} tokens: "
                              f"{', '.join(cut[:10])}{' ...' if len(cut) > 10 else ''}; raise {option('max_len')} "
                              "or shorten them")
    # a pad id in the config makes GPT-2 inspect input_ids for padding (data-dependent, impossible under
    # vmap); sequences here are right-padded and causal, so it is dropped while unlearning and restored
    config_pad, model.config.pad_token_id = model.config.pad_token_id, None
    forward = LMForward(module=model)
    params = {k: v.detach()[None].clone() for k, v in model.named_parameters()}
    ctx = LMContext(None, None, forward, params, np.arange(len(forget)), np.arange(len(forget), len(items)),
                    [seed], seed, None, tokens=tokens, items=items, tok=tok, pad_id=pad, eos_id=eos, max_len=max_len,
                    lora=spec)
    score = lambda p, qs: score_items(forward, p, model, tok, qs, max_len, specials=(pad, eos))
    new_tokens = int((tokens[1] != -100).sum(1).max()) + 4
    probe_rouge = lambda p: float(probe_scores(model, p, tok, probe_items, new_tokens, (pad, eos)).rouge.mean())
    before = {"forget": score(params, forget), "retain": score(params, retain)}
    before_probes = probe_rouge(params) if probe_items else None
    start = time.perf_counter()
    try:
        unlearned = LM_REGISTRY[method].fn(ctx, hp)
    except Diverged as err:
        raise UnlearnkitError(f"{method} diverged ({err}); nothing was saved — lower its lr or epochs") from None
    seconds = time.perf_counter() - start
    if not all(torch.isfinite(v).all() for v in unlearned.values()):
        raise UnlearnkitError(f"{method} diverged (non-finite weights); nothing was saved — lower its lr or epochs")
    after = {"forget": score(unlearned, forget), "retain": score(unlearned, retain)}
    after_probes = probe_rouge(unlearned) if probe_items else None
    report = {"model_dir": str(model_dir), "method": method, "hparams": dataclasses.asdict(hp), "seconds": seconds,
              "lora": dataclasses.asdict(spec) if spec else None,
              "forget_items": len(forget), "retain_items": len(retain),
              **{f"{when}_{split}_probability": float(np.exp(s[split].seq).mean())
                 for when, s in (("before", before), ("after", after)) for split in ("forget", "retain")},
              **({"probes": len(probe_items), "before_probe_rouge": before_probes, "after_probe_rouge": after_probes}
                 if probe_items else {})}
    model.config.pad_token_id = config_pad
    stored_dtype = AutoConfig.from_pretrained(model_dir, local_files_only=True).dtype or torch.float32
    model = load_into(model, {k: v[0] for k, v in unlearned.items()}).to(stored_dtype)
    _save(model, hf_tok, report, out)
    return report


def _save(model: PreTrainedModel, hf_tok, report: dict, out: Path) -> None:
    """Write to a temporary directory and rename it: on any failure (a disk filled while unlearning)
    the temporary and the parents made for it are removed, so nothing half-written is left."""
    made = [p for p in out.parents if not p.exists()]  # deepest first
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))  # ours alone: never a user's
        model.save_pretrained(tmp)
        hf_tok.save_pretrained(tmp)
        (tmp / "unlearnkit.json").write_text(json.dumps(report, indent=2))
        if out.exists():
            out.rmdir()  # checked empty above
        tmp.rename(out)
    except BaseException as e:  # Ctrl-C included: never leave a half-written model behind
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for p in made:
            try:
                p.rmdir()
            except OSError:
                break
        if not isinstance(e, (OSError, SafetensorError)):
            raise
        why = "the disk is full" if disk_full(e) else f"cannot write there ({getattr(e, 'strerror', None) or e})"
        raise UnlearnkitError(f"saving to {out} failed: {why}; nothing was saved — free space or choose another "
                              f"{option('out')} and rerun") from None
