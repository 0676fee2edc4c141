"""Unlearning a user's own saved checkpoint (`lm_checkpoint.unlearn_checkpoint`): GPT-2 and Llama-style."""
import hashlib
import json

import pytest
import torch
from click.testing import CliRunner
from transformers import BertConfig, BertModel, GPT2LMHeadModel, PreTrainedTokenizerFast

from unlearnkit.cli import cli
from unlearnkit.data.tofu_synth import to_jsonl
from unlearnkit.errors import UnlearnkitError
from unlearnkit.lm.task import get_lm_task, load_tofu
from unlearnkit.lm_checkpoint import unlearn_checkpoint

TASK = "tofu-synth-tiny"

pytestmark = pytest.mark.usefixtures("one_thread")


def _digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny GPT-2 trained briefly on tofu-synth-tiny, saved with save_pretrained, plus JSONL files."""
    d = load_tofu(get_lm_task(TASK))
    root = tmp_path_factory.mktemp("ckpt")
    config = d.config.__class__.from_dict({**d.config.to_dict(), "n_positions": 96})  # room for every item
    model = GPT2LMHeadModel(config)
    ids, labels = d.tensors
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):  # fit the first 40 items a little, so there is something to forget
        rows = torch.arange(40)[torch.randperm(40, generator=torch.Generator().manual_seed(step))[:16]]
        loss = model(ids[rows], labels=labels[rows]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.config.pad_token_id = 0  # as fine-tuned GPT-2s often carry: must not break vmapped training
    model.save_pretrained(root / "model")
    PreTrainedTokenizerFast(tokenizer_object=d.tok, pad_token="<pad>", eos_token="<eos>").save_pretrained(root / "model")
    to_jsonl(d.items[:10], root / "forget.jsonl")
    to_jsonl(d.items[10:40], root / "retain.jsonl")
    return root


def test_unlearn_a_checkpoint_saves_a_new_model_and_leaves_the_original(checkpoint):
    before = _digest(checkpoint / "model")
    (checkpoint / "out.partial").mkdir()  # a user's directory that merely looks like a temporary one
    (checkpoint / "out.partial" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["llm", "run", "--model-dir", str(checkpoint / "model"), "--forget",
                                      str(checkpoint / "forget.jsonl"), "--retain", str(checkpoint / "retain.jsonl"),
                                      "--method", "npo", "--set", "npo.epochs=5", "--out", str(checkpoint / "out")])
    assert result.exit_code == 0, result.output
    assert _digest(checkpoint / "model") == before
    report = json.loads((checkpoint / "out" / "unlearnkit.json").read_text())
    assert report["after_forget_probability"] < 0.7 * report["before_forget_probability"]
    reloaded = GPT2LMHeadModel.from_pretrained(checkpoint / "out")
    original = GPT2LMHeadModel.from_pretrained(checkpoint / "model")
    assert not torch.equal(reloaded.transformer.h[0].mlp.c_fc.weight, original.transformer.h[0].mlp.c_fc.weight)
    assert (checkpoint / "out" / "tokenizer.json").is_file()
    assert (checkpoint / "out.partial" / "keep.txt").read_text() == "mine"
    assert reloaded.config.pad_token_id == 0
    assert not [p for p in checkpoint.iterdir() if p.name.startswith(".out.partial")]


def test_checkpoint_errors_are_clear_and_nothing_is_written(checkpoint, tmp_path):
    args = (checkpoint / "forget.jsonl", checkpoint / "retain.jsonl", "ga")
    with pytest.raises(UnlearnkitError, match="outside model_dir="):
        unlearn_checkpoint(checkpoint / "model", *args, out=checkpoint / "model" / "sub")
    with pytest.raises(UnlearnkitError, match="no config.json"):
        unlearn_checkpoint(tmp_path, *args, out=tmp_path / "o")
    with pytest.raises(UnlearnkitError, match="exceed max_len=8 tokens"):
        unlearn_checkpoint(checkpoint / "model", *args, out=tmp_path / "o", max_len=8)
    for method, why in (("retrain", "from scratch"), ("era", "from scratch"), ("guard", "not its weights")):
        with pytest.raises(UnlearnkitError, match=f"cannot unlearn a checkpoint \\(it .*{why}"):
            unlearn_checkpoint(checkpoint / "model", *args[:2], method, out=tmp_path / "o")
    # a bidirectional encoder is not a causal LM
    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=2000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(bert)
    PreTrainedTokenizerFast(tokenizer_file=str(checkpoint / "model" / "tokenizer.json"), pad_token="<pad>",
                            eos_token="<eos>").save_pretrained(bert)
    with pytest.raises(UnlearnkitError, match="not causal|not a causal"):
        unlearn_checkpoint(bert, *args, out=tmp_path / "o")
    # a tokenizer with more tokens than the model's embedding: another model's tokenizer
    small = tmp_path / "small"
    cfg = GPT2LMHeadModel.from_pretrained(checkpoint / "model").config
    cfg.vocab_size = 300
    GPT2LMHeadModel(cfg).save_pretrained(small)
    PreTrainedTokenizerFast(tokenizer_file=str(checkpoint / "model" / "tokenizer.json"), pad_token="<pad>",
                            eos_token="<eos>").save_pretrained(small)
    with pytest.raises(UnlearnkitError, match="tokenizer mismatch"):
        unlearn_checkpoint(small, *args, out=tmp_path / "o")
    with pytest.raises(UnlearnkitError, match="ga diverged .*nothing was saved"):  # a NaN loss: one line
        unlearn_checkpoint(checkpoint / "model", *args, out=tmp_path / "o", overrides={"lr": "1e12", "epochs": "5"})
    assert not (tmp_path / "o").exists()


def test_malformed_jsonl_is_reported_with_line_numbers(checkpoint, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q?", "answer": "a."}\nnot json\n{"question": "q2?"}\n')
    result = CliRunner().invoke(cli, ["llm", "run", "--model-dir", str(checkpoint / "model"), "--forget", str(bad),
                                      "--retain", str(checkpoint / "retain.jsonl"), "--out", str(tmp_path / "o")],
                                standalone_mode=False)
    assert isinstance(result.exception, UnlearnkitError)
    assert "line 2" in str(result.exception) and "line 3" in str(result.exception)
    assert not (tmp_path / "o").exists()


def test_a_llama_style_checkpoint_unlearns_too(checkpoint, tmp_path):
    """Nothing is GPT-2-specific: a Llama (rotary positions, down_proj MLPs, its own config) goes the same way."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = GPT2LMHeadModel.from_pretrained(checkpoint / "model").config.vocab_size
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, eos_token_id=1,
                      pad_token_id=0, bos_token_id=1)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "llama")  # trained in float32, saved back
    PreTrainedTokenizerFast(tokenizer_file=str(checkpoint / "model" / "tokenizer.json"), pad_token="<pad>",
                            eos_token="<eos>").save_pretrained(tmp_path / "llama")
    args = (checkpoint / "forget.jsonl", checkpoint / "retain.jsonl")
    report = unlearn_checkpoint(tmp_path / "llama", *args, "rmu", tmp_path / "out", {"layer": "1", "epochs": "2"})
    before = LlamaForCausalLM.from_pretrained(tmp_path / "llama").state_dict()
    after = LlamaForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"model.layers.0.mlp.down_proj.weight"}, changed
    assert after["model.layers.0.mlp.down_proj.weight"].dtype == torch.bfloat16
    assert report["method"] == "rmu"
