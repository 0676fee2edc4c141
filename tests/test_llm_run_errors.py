"""`llm run` refuses every user mistake with one UnlearnkitError line before any unlearning compute,
and leaves nothing behind: no --out directory, no `.OUT.partial-*` temporary beside it."""
import errno
import os
import pathlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from transformers import GPT2LMHeadModel, PreTrainedModel, PreTrainedTokenizerFast

from unlearnkit.data.tofu_synth import to_jsonl
from unlearnkit.errors import UnlearnkitError
from unlearnkit.lm.task import get_lm_task, load_tofu
from unlearnkit.lm_checkpoint import load_causal_lm, unlearn_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An untrained one-layer GPT-2 with its tokenizer, and four forget and four retain QAs: errors need no
    training, and the one run that saves (disk full) takes a second."""
    d = load_tofu(get_lm_task("tofu-synth-tiny"))
    root = tmp_path_factory.mktemp("errckpt")
    GPT2LMHeadModel(d.config.__class__.from_dict({**d.config.to_dict(), "n_positions": 96})).save_pretrained(
        root / "model")
    PreTrainedTokenizerFast(tokenizer_object=d.tok, pad_token="<pad>", eos_token="<eos>").save_pretrained(root / "model")
    to_jsonl(d.items[:4], root / "forget.jsonl")
    to_jsonl(d.items[4:8], root / "retain.jsonl")
    return root


def _copy_model(ckpt, tmp_path, drop=()):
    model = tmp_path / "model"
    shutil.copytree(ckpt / "model", model)
    for name in drop:
        (model / name).unlink()
    return model


def _refused(match, model_dir, forget, retain, out, **kw):
    """Assert a one-line UnlearnkitError matching `match`, and that nothing was written beside `out`."""
    out = Path(out)
    with pytest.raises(UnlearnkitError, match=match) as err:
        unlearn_checkpoint(model_dir, forget, retain, kw.pop("method", "ga"), out, **kw)
    assert "\n" not in str(err.value)
    assert not out.exists() or out.is_file()  # a user's file given as --out stays as it was
    parent = next(p for p in out.parents if p.is_dir())
    assert not [p for p in parent.iterdir() if ".partial" in p.name]
    return str(err.value)


def test_missing_tokenizer_files_are_named(ckpt, tmp_path):
    model = _copy_model(ckpt, tmp_path, drop=("tokenizer.json", "tokenizer_config.json"))
    msg = _refused("no tokenizer in", model, ckpt / "forget.jsonl", ckpt / "retain.jsonl", tmp_path / "out")
    assert "tokenizer.json" in msg and "save_pretrained" in msg


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


class _RunsCode:
    """A pickle that would touch a file if it were ever unpickled with code execution."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.mark.parametrize("damage", ["truncated safetensors", "garbage safetensors", "truncated bin", "garbage bin",
                                    "code-running bin"])
def test_corrupt_weights_are_refused_and_pickles_never_run(ckpt, tmp_path, damage):
    model = _copy_model(ckpt, tmp_path)
    weights = model / "model.safetensors"
    if "bin" in damage:
        state = GPT2LMHeadModel.from_pretrained(model).state_dict()
        weights.unlink()
        weights = model / "pytorch_model.bin"
        torch.save({**state, "evil": _RunsCode(tmp_path / "ran")} if "code" in damage else state, weights)
    if "truncated" in damage:
        _truncate(weights)
    elif "garbage" in damage:
        weights.write_bytes(np.random.default_rng(0).bytes(4000))
    msg = _refused("truncated, corrupt or not plain tensors", model, ckpt / "forget.jsonl", ckpt / "retain.jsonl",
                   tmp_path / "out")
    assert weights.name in msg
    assert not (tmp_path / "ran").exists()



@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.safetensors"])
def test_any_garbage_weights_read_as_corrupt_not_as_another_error(ckpt, tmp_path, name):
    """Random bytes make the unpickler fail in many ways (a missing memo key, an empty stack, a bad opcode):
    every one is reported as corrupt weights, never as "not a causal language model"."""
    model = _copy_model(ckpt, tmp_path)
    (model / "model.safetensors").unlink()
    for seed in range(40):
        (model / name).write_bytes(np.random.default_rng(seed).bytes(4000))
        with pytest.raises(UnlearnkitError, match="truncated, corrupt or not plain tensors"):
            load_causal_lm(model)

def test_out_in_a_read_only_directory_is_refused(ckpt, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        try:  # root ignores mode bits: then simulate the read-only directory instead of skipping
            (ro / "probe").touch()
            (ro / "probe").unlink()
            access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != ro and access(p, mode, **kw))
        except PermissionError:
            pass
        _refused("is not writable", ckpt / "model", ckpt / "forget.jsonl", ckpt / "retain.jsonl", ro / "out")
        _refused("is not writable", ckpt / "model", ckpt / "forget.jsonl", ckpt / "retain.jsonl", ro / "a" / "out")
    finally:
        ro.chmod(0o700)


def test_out_under_a_file_or_being_a_file_is_refused(ckpt, tmp_path):
    (tmp_path / "file").write_text("mine")
    args = (ckpt / "model", ckpt / "forget.jsonl", ckpt / "retain.jsonl")
    _refused("is a file, not a directory", *args, tmp_path / "file" / "out")
    _refused("is a file, not a directory", *args, tmp_path / "file" / "a" / "out")
    _refused("is an existing file", *args, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("kw, match", [({"max_len": 0}, "at least 2"), ({"max_len": 1}, "at least 2"),
                                       ({"seed": -1}, "from 0 to 4294967295"), ({"seed": 2**32}, "from 0 to")],
                         ids=["max_len=0", "max_len=1", "seed=-1", "seed=2**32"])
def test_max_len_and_seed_out_of_range_are_refused(ckpt, tmp_path, kw, match):
    _refused(match, ckpt / "model", ckpt / "forget.jsonl", ckpt / "retain.jsonl", tmp_path / "out", **kw)


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    ("dir", "is a directory"),
    (b'{"question": "q?", "answer": "a."}\n\xff\xfe\x00binary', "not UTF-8 text: line 2"),
    ('{"question": "q?", "answer": "a."}\nnot json\n', "line 2: not valid JSON"),
    ('{"question": "q?", "answer": "a."}\n{"question": "q2?"}\n', 'line 2: missing "answer"'),
    ('{"answer": "a."}\n', 'line 1: missing "question"'),
], ids=["missing", "directory", "binary", "not-json", "no-answer", "no-question"])
@pytest.mark.parametrize("which", ["forget", "retain"])
def test_bad_question_answer_files_name_the_file_and_line(ckpt, tmp_path, content, match, which):
    bad = tmp_path / "bad.jsonl"
    if content == "dir":
        bad.mkdir()
    elif isinstance(content, bytes):
        bad.write_bytes(content)
    elif content is not None:
        bad.write_text(content)
    files = {"forget": ckpt / "forget.jsonl", "retain": ckpt / "retain.jsonl", which: bad}
    msg = _refused(match, ckpt / "model", files["forget"], files["retain"], tmp_path / "out")
    assert str(bad) in msg


@pytest.mark.parametrize("which", ["forget", "retain"])
@pytest.mark.parametrize("content", ["", "\n  \n"], ids=["zero-bytes", "blank-lines"])
def test_empty_forget_or_retain_file_is_refused(ckpt, tmp_path, which, content):
    (tmp_path / "empty.jsonl").write_text(content)
    files = {"forget": ckpt / "forget.jsonl", "retain": ckpt / "retain.jsonl", which: tmp_path / "empty.jsonl"}
    _refused("holds no question–answer items", ckpt / "model", files["forget"], files["retain"], tmp_path / "out")


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),  # as Python writes report it
                                   SafetensorError("Error while serializing: I/O error: No space left on device "
                                                   "(os error 28)")],  # as safetensors' Rust writer does
                         ids=["OSError", "SafetensorError"])
def test_disk_full_while_saving_leaves_nothing(ckpt, tmp_path, monkeypatch, error):
    def full(self, *args, **kwargs):
        (Path(args[0]) / "model.safetensors").write_bytes(b"half")  # a partial write to be cleaned up
        raise error

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "new" / "deeper" / "out"  # parents made for the save go too
    msg = _refused("the disk is full", ckpt / "model", ckpt / "forget.jsonl", ckpt / "retain.jsonl", out,
                   overrides={"epochs": 1})
    assert "nothing was saved" in msg
    assert not (tmp_path / "new").exists()


def test_cli_prints_one_error_line_and_exits_2(ckpt, tmp_path):
    """The installed entry point, as a user runs it: a missing tokenizer used to end in a traceback."""
    model = _copy_model(ckpt, tmp_path, drop=("tokenizer.json",))
    args = [str(Path(sys.executable).parent / "unlearnkit"), "llm", "run", "--model-dir", str(model), "--forget",
            str(ckpt / "forget.jsonl"), "--retain", str(ckpt / "retain.jsonl"), "--method", "ga", "--out",
            str(tmp_path / "out")]
    res = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no tokenizer in"), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert not (tmp_path / "out").exists()


def test_a_pair_both_forgotten_and_retained_is_refused(ckpt, tmp_path):
    msg = _refused("in both the forget file and the retain file", ckpt / "model", ckpt / "forget.jsonl",
                   ckpt / "forget.jsonl", tmp_path / "out")
    assert msg.startswith("4 question–answer pair(s)")
