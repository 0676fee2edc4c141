"""The LM pipeline end to end on the tiny task: `run`, ID vs OOD, and unlearning a saved checkpoint."""
import hashlib
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import BertConfig, BertModel, GPT2LMHeadModel, PreTrainedTokenizerFast

from unlearnkit.cli import cli
from unlearnkit.data.tofu_synth import to_jsonl
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import RunConfig, run
from unlearnkit.lm.task import get_lm_task, load_tofu
from unlearnkit.lm_checkpoint import unlearn_checkpoint
from unlearnkit.lm_ood import id_vs_ood

TASK = "tofu-synth-tiny"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("lmcache"))


@pytest.fixture(scope="module")
def results(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lmrun")
    config = RunConfig(task=TASK, forget="authors:0.25", methods=("none", "ga", "npo"), models=3, cache_dir=cache_dir,
                       bootstrap=10)
    return run(config, out), out


def test_run_writes_every_lm_field(results):
    res, out = results
    on_disk = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in on_disk["rows"]] == ["none", "ga", "npo"]
    assert set(json.loads((out / "timings.json").read_text())["rows"]) == {"none", "ga", "npo", "retrain"}
    for row in on_disk["rows"] + [on_disk["noise_floor"]]:
        assert set(row["mia_auc"]) == {"loss", "zlib", "mink", "minkpp", "ref", "gradnorm"}
        assert set(row["klom_p95"]) == {"forget", "retain", "val"}
        assert set(row["accuracy"]) == {"forget", "retain", "val"}
        for key in ("forget_quality", "model_utility", "forget_rouge", "flops", "cost_vs_retrain",
                    "klom_mean", "klom_median", "diverged", "budget", "tuned", "hparams"):
            assert key in row
        assert 0 <= row["forget_quality"] <= 1 and 0 <= row["model_utility"] <= 1
    assert set(np.load(out / "klom.npz").files) >= {"klom/none", "klom/ga", "klom/npo", "split/forget"}


def test_rescore_reproduces_an_lm_run_from_its_saved_item_scores(results, tmp_path):
    """scores.npz keeps every item set's per-model scores (sequence log-probs, truth ratios, ROUGE, the
    attacks' scores): `rescore` recomputes every LM metric from them, byte for byte."""
    import shutil

    from unlearnkit.rescore import rescore
    _, out = results
    copy = shutil.copytree(out, tmp_path / "run")
    z = np.load(copy / "scores.npz")
    assert str(z["kind"]) == "lm" and z["row/npo/forget/seq"].shape[0] == 3
    assert {"arm/oracles/forget/mia/minkpp", "arm/originals/world/prob_options", "row/ga/retain/rouge"} <= set(z.files)
    before = {n: (copy / n).read_bytes() for n in ("results.json", "klom.npz")}
    rescore(copy)
    assert {n: (copy / n).read_bytes() for n in before} == before
    again = rescore(copy, estimators=("knn",))
    assert all("knn" in r["klom_estimators"] for r in again["rows"])


def test_the_lm_table_fits_a_terminal(results):
    from unlearnkit.report import format_lm_table
    text = format_lm_table(results[0])
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "forget Q" in text and "mink++" in text and "KLoM95 forget" in text and "gauss95 forget" in text


def test_an_lm_run_writes_a_report_that_renders_without_console_errors(results, tmp_path):
    from conftest import render_in_chromium
    _, out = results
    page = (out / "report.html").read_text()
    assert "forget Q" in page and "AUC minkpp" in page and page.count("<svg") == 2
    assert (out / "figures" / "tradeoff.png").is_file()
    png, console = render_in_chromium(out / "report.html", tmp_path)
    assert len(png) > 20_000 and console == []


def test_original_models_memorised_the_forget_set_and_retraining_did_not(results):
    res, _ = results
    none = next(r for r in res["rows"] if r["method"] == "none")
    floor = res["noise_floor"]
    # TOFU's reading: the originals are told apart from the oracles, a retrained arm is not
    assert none["forget_quality"] < 0.05 < floor["forget_quality"]
    # membership inference on a set the models trained on: clearly above chance; for retrained models, near it
    assert min(none["mia_auc"].values()) > 0.9
    assert floor["mia_auc"]["loss"] < 0.75
    assert none["probability"]["forget"] > 5 * floor["probability"]["forget"]
    assert none["forget_rouge"] > floor["forget_rouge"] + 0.2
    assert none["accuracy"]["forget"] > floor["accuracy"]["forget"] + 0.2  # teacher-forced answer tokens


def test_gradient_ascent_forgets_and_costs_utility(results):
    res, _ = results
    none, ga = (next(r for r in res["rows"] if r["method"] == m) for m in ("none", "ga"))
    assert ga["probability"]["forget"] < 0.2 * none["probability"]["forget"]
    assert ga["forget_rouge"] < none["forget_rouge"]
    assert ga["model_utility"] < none["model_utility"]
    assert 0 < ga["flops"] < res["noise_floor"]["flops"]


def test_lm_run_rejects_classifier_methods_and_bad_specs(cache_dir):
    with pytest.raises(UnlearnkitError, match="unknown language-model method"):
        run(RunConfig(task=TASK, forget="authors:0.1", methods=("neggrad+",), models=2, cache_dir=cache_dir))
    with pytest.raises(UnlearnkitError, match="fraction"):
        run(RunConfig(task=TASK, forget="authors:2.0", methods=("ga",), models=2, cache_dir=cache_dir))


def test_classifier_only_commands_name_the_lm_task_clearly():
    for command in (["generalisation", "--task", TASK], ["datamodels", "--task", TASK, "--out", "unused"]):
        result = CliRunner().invoke(cli, command, standalone_mode=False)
        assert isinstance(result.exception, UnlearnkitError), command
        assert "language-model task" in str(result.exception)


@pytest.fixture(scope="module")
def ood(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ood") / "out"
    config = RunConfig(task=TASK, models=3, cache_dir=cache_dir, bootstrap=0)
    return config, id_vs_ood(config, "ga", authors=2, steps=(1, 6), out=out), out


def test_id_vs_ood_records_a_curve_per_kind(ood):
    """Per kind: the curve, and the NeurIPS'23 ε over sequence scores with its permutation null, each forget
    item's memorisation and the step it reached the oracles (metrics.generative)."""
    from unlearnkit.lm_ood import format_id_vs_ood
    config, res, out = ood
    assert json.loads((out / "id_vs_ood.json").read_text()) == json.loads(json.dumps(res))
    for kind, spec in (("in-distribution", "authors:0.05"), ("out-of-distribution", "canaries:10")):
        r = res[kind]
        assert r["spec"] == spec and [p["steps"] for p in r["curve"]] == [1, 6]
        first, last = r["curve"]
        assert last["forget_probability"] < first["forget_probability"]  # more ascent, less likely answers
        size = len(r["examples"]["ids"])
        assert size == res["config"]["size"]
        # the originals were trained on the forget items: memorised, and told apart from the oracles
        assert all(m > 0 for m in r["examples"]["memorisation"])
        assert r["original"]["epsilon_forget_score"] < r["original"]["epsilon_forget_score_null"]
        for p in r["curve"]:
            assert len(p["epsilon_per_item"]) == size
            assert 0.0 <= p["epsilon_forget_score"] <= 1.0 and 0.0 <= p["epsilon_forget_score_null"] <= 1.0
        assert r["speed"]["reached"] >= 1 and r["speed"]["items"] == size  # ascent reaches the oracles
        assert set(r["examples"]["steps_to_oracle"]) <= {0, 1, 6, None}
    text = format_id_vs_ood(res)
    assert "F (null)" in text and "memorisation" in text and "forget Q" in text
    page = (out / "report.html").read_text()  # the curves as a figure, in a report of its own
    assert page.count("<svg") == 1 and (out / "figures" / "id_vs_ood.png").is_file()
    with pytest.raises(UnlearnkitError, match="canaries"):
        id_vs_ood(config, "ga", authors=5, steps=(1,))


def test_id_vs_ood_points_are_cells_a_rerun_reads_back(ood, monkeypatch):
    """The curve's points are cells (cells.run_cells): the same curve again computes no point and reads
    the same numbers."""
    from unlearnkit.lm_experiment import LMBench
    config, first, _ = ood
    monkeypatch.setattr(LMBench, "run_job", lambda self, job: pytest.fail(f"{job.label} was computed again"))
    assert id_vs_ood(config, "ga", authors=2, steps=(1, 6)) == first


# --- a user's own checkpoint ----------------------------------------------------------------------------

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
    with pytest.raises(UnlearnkitError, match="outside --model-dir"):
        unlearn_checkpoint(checkpoint / "model", *args, out=checkpoint / "model" / "sub")
    with pytest.raises(UnlearnkitError, match="no config.json"):
        unlearn_checkpoint(tmp_path, *args, out=tmp_path / "o")
    with pytest.raises(UnlearnkitError, match="exceed --max-len 8"):
        unlearn_checkpoint(checkpoint / "model", *args, out=tmp_path / "o", max_len=8)
    with pytest.raises(UnlearnkitError, match="cannot unlearn a checkpoint"):
        unlearn_checkpoint(checkpoint / "model", *args[:2], "retrain", out=tmp_path / "o")
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


def test_lm_trajectories_evaluate_every_k_steps_and_pick_the_stated_best_step(results, cache_dir, tmp_path):
    """`--trajectories K` on an LM run: forget quality, utility and seq-KLoM at step 0 and every K steps, the
    step the stated rule selects, per-item arrays in scores.npz, and the method's cost unchanged."""
    base = dict(task=TASK, forget="authors:0.25", methods=("ga",), models=3, cache_dir=cache_dir, bootstrap=10)
    plain = run(RunConfig(**base))["rows"][0]  # the `results` run's ga job, read back from its cell
    res = run(RunConfig(**base, trajectories=7, best_step="min:forget_probability;model_utility>=0.5x"),
              tmp_path / "out")
    row = res["rows"][0]
    t = row["trajectory"]
    assert t["steps"] == [0, 7, 14, 20]  # 20 steps of ga: every 7th, and where it stopped
    assert len(t["forget_quality"]) == len(t["steps"]) == len(t["klom_forget"])
    assert t["klom_forget"][-1] == pytest.approx(row["klom_p95"]["forget"])  # the last step is the row itself
    assert t["forget_probability"][-1] < t["forget_probability"][0]  # ascent lowers the answers' probability
    best = t["best_step"]
    allowed = [i for i, u in enumerate(t["model_utility"]) if u >= 0.5 * t["model_utility"][0]]
    assert best["index"] == min(allowed, key=lambda i: t["forget_probability"][i])
    assert best["step"] == t["steps"][best["index"]] and best["rule"] == "min:forget_probability;model_utility>=0.5x"
    assert row["flops"] == plain["flops"]  # the evaluation is not charged to the method
    with np.load(tmp_path / "out" / "scores.npz") as z:
        assert z["trajectory/ga/klom"].shape[0] == len(t["steps"]) == z["trajectory/ga/seq"].shape[0]
        assert z["trajectory/ga/seq"].shape[1] == 3
    from unlearnkit.report import format_lm_table
    assert f"selects step {best['step']}" in format_lm_table(res).replace("\n  ", " ")
    page = (tmp_path / "out" / "report.html").read_text()
    assert (tmp_path / "out" / "figures" / "steps.png").is_file() and "--best-step" in page
    with pytest.raises(UnlearnkitError, match="--best-step"):
        RunConfig(**base, best_step="max:accuracy")
