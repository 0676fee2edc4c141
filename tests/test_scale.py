"""Scale: bf16 mixed precision, devices, memory-sized chunks of an arm, the compiled optimizer, Ray.
(The compute options' bad input is in test_bad_input.py, with every other refused option.)"""
import json
import sys
import threading
import time

import pytest
import torch
from conftest import Interrupted

import unlearnkit.engine.optim as optim_module
import unlearnkit.zoo.train as zoo_train
from unlearnkit.engine import EpochStream, Optim, fit
from unlearnkit.engine.compute import Compute, bf16_fast, current, resolve, use
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import RunConfig, run
from unlearnkit.metrics import accuracy
from unlearnkit.models import init_params
from unlearnkit.tasks import get_task
from unlearnkit.zoo import ZooCache, arm_seeds, cross_entropy_loss, template, train_models

TASK = get_task("digits-mlp")
needs_bf16 = pytest.mark.skipif(not bf16_fast("cpu"), reason="this CPU has no hardware bfloat16 matmul")


def _arm(digits, n=4, compute=Compute(), cache=None):
    with use(compute):
        return train_models(TASK, digits, torch.arange(len(digits.y_train)), arm_seeds(0, n), cache)


@needs_bf16
def test_bf16_trains_float32_masters_as_well_as_fp32(digits):
    """Mixed precision (Micikevicius et al. 2018): the weights kept are float32 and the models are as
    accurate as float32 ones, but not the same numbers (the products were rounded)."""
    fp32 = _arm(digits, compute=Compute("cpu", "fp32")).params
    bf16 = _arm(digits, compute=Compute("cpu", "bf16")).params
    forward = template(TASK, digits)
    from unlearnkit.engine import predict
    acc = {name: accuracy(predict(forward, p, digits.x_val), digits.y_val).mean().item()
           for name, p in (("fp32", fp32), ("bf16", bf16))}
    assert all(v.dtype == torch.float32 for v in bf16.values())
    assert abs(acc["fp32"] - acc["bf16"]) < 0.02 and acc["bf16"] > 0.9, acc
    assert not torch.equal(fp32["1.weight"], bf16["1.weight"])


def test_precision_and_device_type_are_part_of_the_cache_key(digits):
    pos, seeds = torch.arange(10), arm_seeds(0, 2)
    keys = set()
    for compute in (Compute("cpu", "fp32"), Compute("cpu", "bf16"), Compute("cuda:0", "fp32"),
                    Compute("cuda:1", "fp32"), Compute("cpu", "fp32", max_memory=1 << 20)):
        with use(compute):
            keys.add(zoo_train.zoo_key(TASK, digits, pos, seeds))
    assert len(keys) == 3  # cuda:0 = cuda:1 (same kind of device); a memory limit changes no weight


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_bf16)])
def test_an_arm_trained_in_chunks_equals_one_pass(digits, tmp_path, precision):
    """Model i depends on its seed alone, so chunks of models give the one-pass arm bit for bit; each
    chunk is cached on its own while the arm trains, and only the whole arm stays."""
    whole = _arm(digits, 6, Compute("cpu", precision)).params
    per_model = StepBytes.of(digits)
    cache = ZooCache(tmp_path)
    chunked = _arm(digits, 6, Compute("cpu", precision, max_memory=int(2.5 * per_model)), cache)
    for k in whole:
        assert torch.equal(whole[k], chunked.params[k]), k
    entries = [json.loads(m.read_text()) for m in (tmp_path / "zoo").glob("*/manifest.json")]
    assert [e.get("chunks") for e in entries] == [3]  # chunks of 2 models; the chunks' own entries removed
    again = _arm(digits, 6, Compute("cpu", precision, max_memory=int(2.5 * per_model)), cache)
    assert again.cached


def test_an_interrupted_chunked_arm_resumes_from_its_finished_chunks(digits, tmp_path, monkeypatch):
    per_model = StepBytes.of(digits)
    compute = Compute("cpu", "fp32", max_memory=int(2.5 * per_model))
    reference = _arm(digits, 6, compute).params
    cache = ZooCache(tmp_path)
    trained = []
    real = zoo_train._train
    monkeypatch.setattr(zoo_train, "_train", lambda *a, **k: trained.append(len(a[2].seeds)) or real(*a, **k))
    calls = {"n": 0}  # the first chunk of 2 finishes; the second dies after its third epoch's checkpoint
    real_save = ZooCache.save_checkpoint

    def die_in_second_chunk(self, key, ckpt, spent=None):
        calls["n"] += 1
        if calls["n"] > TASK.recipe.epochs + 3:
            raise Interrupted
        real_save(self, key, ckpt, spent)
    monkeypatch.setattr(ZooCache, "save_checkpoint", die_in_second_chunk)
    with pytest.raises(Interrupted):
        _arm(digits, 6, compute, cache)
    monkeypatch.setattr(ZooCache, "save_checkpoint", real_save)
    trained.clear()
    resumed = _arm(digits, 6, compute, cache)
    assert trained == [2, 2]  # the first chunk was loaded; the second resumed, the third trained
    assert not any(p.name == "checkpoint.pt" for p in tmp_path.rglob("*"))
    for k in reference:
        assert torch.equal(reference[k], resumed.params[k])


def test_compiled_update_equals_the_op_by_op_one(digits, monkeypatch):
    forward = template(TASK, digits)
    init = init_params(TASK.model, digits.input_shape, 10, [0, 1], **TASK.model_kwargs)
    stream = EpochStream(torch.arange(len(digits.y_train)), [0, 1], 64)
    out = {}
    for name, threshold in (("eager", 1 << 62), ("compiled", 0)):
        monkeypatch.setattr(optim_module, "COMPILE_MIN", threshold)
        for opt in (Optim("sgd", 0.05, 0.9, 5e-4, "linear"), Optim("adam", 1e-3, weight_decay=1e-4)):
            out[name, opt.name] = fit(cross_entropy_loss(forward), init, {"train": stream},
                                      (digits.x_train, digits.y_train), 20, opt)
    for opt in ("sgd", "adam"):
        for k in init:
            torch.testing.assert_close(out["compiled", opt][k], out["eager", opt][k], rtol=1e-5, atol=1e-6)


def test_auto_resolves_to_what_this_machine_has():
    compute = resolve()
    assert compute.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert compute.precision == ("tf32" if compute.is_cuda else "bf16" if bf16_fast(compute.device) else "fp32")
    config = RunConfig(task="digits-mlp", models=2)
    assert (config.device, config.precision) == (compute.device, compute.precision)  # recorded resolved
    assert current() == Compute()  # nothing changed outside a run


def test_auto_on_a_cuda_gpu_is_tf32(monkeypatch):
    """tf32 trained the default task 1.37x faster than bf16 on an H200 (`resolve`'s docstring)."""
    import unlearnkit.engine.compute as compute
    monkeypatch.setattr(compute, "_device", lambda device: "cuda:0")
    assert resolve("cuda", "auto") == Compute("cuda:0", "tf32")


def test_bf16_on_a_cpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    with pytest.raises(UnlearnkitError, match="no hardware bfloat16 matmul"):
        resolve("cpu", "bf16")
    assert resolve("cpu", "auto").precision == "fp32"


def test_ray_missing_is_refused_with_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UnlearnkitError, match=r"pip install 'unlearnkit\[ray\]'"):
        RunConfig(task="digits-mlp", models=2, backend="ray")


def test_ray_backend_gives_the_local_results(digits, tmp_path):
    """Arm chunks as Ray tasks on a local cluster: the same models, the same results.json; only the
    driver writes the cache."""
    ray = pytest.importorskip("ray")
    per_model = StepBytes.of(digits)
    base = dict(task="digits-mlp", models=4, methods=("none", "finetune"), bootstrap=0,
                max_memory=str(int(2.5 * per_model)), precision="fp32")
    local = run(RunConfig(**base, cache_dir=str(tmp_path / "a")), tmp_path / "local")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run(RunConfig(**base, cache_dir=str(tmp_path / "b"), backend="ray"), tmp_path / "ray")
    finally:
        ray.shutdown()
    assert (tmp_path / "local" / "klom.npz").read_bytes() == (tmp_path / "ray" / "klom.npz").read_bytes()
    def numbers(rows):  # all but the wall clock
        return [{k: v for k, v in r.items() if k not in ("seconds", "cost_vs_retrain")} for r in rows]
    assert numbers(local["rows"] + [local["noise_floor"]]) == numbers(remote["rows"] + [remote["noise_floor"]])
    assert remote["noise_floor"]["flops"] > 0  # the Ray tasks' work is booked to the method that asked for it
    assert local["run_id"] == remote["run_id"]  # the backend is not part of what a run computes
    assert remote["config"]["backend"] == "ray"


class StepBytes:
    """One digits-mlp model's training-step memory, as the zoo measures it (to set --max-memory)."""

    @staticmethod
    def of(digits) -> float:
        from unlearnkit.budget import StepProfile
        one = init_params(TASK.model, digits.input_shape, 10, [0], **TASK.model_kwargs)
        profile = StepProfile.measure(cross_entropy_loss(template(TASK, digits)), one,
                                      (digits.x_train, digits.y_train), TASK.recipe.batch_size)
        return profile.model_bytes(TASK.recipe.batch_size)


@needs_bf16
def test_bf16_reads_the_same_noise_floor_and_do_nothing_row(tmp_path):
    """The science does not depend on the training precision: the do-nothing and noise-floor rows'
    KLoM p95 intervals overlap between fp32 and bf16 on every split (the full-size check, N = 64 on
    fashion-mnist-mlp, is benchmarks/precision_agreement.py)."""
    rows = {}
    for p in ("fp32", "bf16"):
        res = run(RunConfig(task="digits-mlp", forget="random:40", methods=("none", "retrain"), models=16,
                            precision=p, cache_dir=str(tmp_path)))
        rows[p] = {r["method"]: r for r in res["rows"]}
    for method in ("none", "retrain"):
        for split in ("forget", "retain", "val"):
            (a, b), (c, d) = (rows[p][method]["klom_p95_ci"][split] for p in ("fp32", "bf16"))
            assert a <= d and c <= b, (method, split, (a, b), (c, d))
    assert rows["fp32"]["none"]["klom_p95"]["forget"] > rows["fp32"]["retrain"]["klom_p95"]["forget"]


def _cnn_fit(digits, compute, optim, loss=None, mask=None, frozen=None, steps=12):
    """A small CNN on the digits (8×8 images), N = 3, trained by `fit` on `compute`."""
    from unlearnkit.engine import Forward
    from unlearnkit.models import build_model
    forward = Forward(build_model("cnn", (1, 8, 8), 10, channels=4))
    seeds = arm_seeds(0, 3)
    init = init_params("cnn", (1, 8, 8), 10, seeds, channels=4)
    stream = EpochStream(torch.arange(len(digits.y_train)), seeds, 32)
    with use(compute):
        return init, fit(loss or cross_entropy_loss(forward, 0.01), init, {"train": stream},
                         (digits.x_train.view(-1, 1, 8, 8), digits.y_train), steps, optim, frozen=frozen,
                         update_mask=mask)


@pytest.mark.parametrize("optim", [Optim("sgd", 0.05, 0.9, 5e-4), Optim("adam", 1e-3, weight_decay=1e-3)])
def test_models_one_by_one_compute_what_vmap_computes(digits, optim):
    """`ensemble="loop"` runs the same loss (here with a gradient penalty: double backpropagation) model by
    model on slices of the stacked tensors and one stacked optimizer updates them: the same models as the
    vmapped step, to float rounding (the kernels differ: a grouped convolution under vmap)."""
    init, vmapped = _cnn_fit(digits, Compute("cpu", "fp32"), optim)
    _, looped = _cnn_fit(digits, Compute("cpu", "fp32", ensemble="loop"), optim)
    for k in init:
        assert not torch.allclose(init[k], looped[k]), k  # it trained
        torch.testing.assert_close(looped[k], vmapped[k], rtol=1e-4, atol=1e-5)


def test_models_one_by_one_leave_unused_parameters_masks_and_divergence_as_vmap_does(digits):
    from unlearnkit.errors import Diverged

    def head_only(params, batch, frozen):  # the convolutions are not used: vmap leaves them alone, so must loop
        x, y, _ = batch["train"]
        features = frozen["features"].index_select(0, batch["train"][2])
        return torch.nn.functional.cross_entropy(features @ params["7.weight"].T + params["7.bias"], y)
    init = init_params("cnn", (1, 8, 8), 10, arm_seeds(0, 3), channels=4)
    features = {"features": torch.randn(3, len(digits.y_train), init["7.weight"].shape[2])}
    mask = {k: torch.ones_like(v) for k, v in init.items()}
    mask["7.bias"][:, 5:] = 0
    out = {e: _cnn_fit(digits, Compute("cpu", "fp32", ensemble=e), Optim("sgd", 0.05, 0.9, 5e-4), head_only, mask,
                       features)[1] for e in ("vmap", "loop")}
    for k in init:
        if not k.startswith("7."):
            assert torch.equal(out["loop"][k], init[k]) and torch.equal(out["vmap"][k], init[k]), k
        torch.testing.assert_close(out["loop"][k], out["vmap"][k])
    assert torch.equal(out["loop"]["7.bias"][:, 5:], init["7.bias"][:, 5:])

    def model_1_diverges(params, batch, frozen):
        return head_only(params, batch, frozen) * frozen["scale"]
    features["scale"] = torch.tensor([1.0, float("nan"), 1.0])
    with pytest.raises(Diverged) as err:
        _cnn_fit(digits, Compute("cpu", "fp32", ensemble="loop"), Optim("sgd", 0.05), model_1_diverges, None, features)
    assert err.value.models == [1]


def test_convolutional_families_loop_on_the_cpu_and_the_choice_is_in_the_key(digits):
    from unlearnkit.engine.compute import ensemble_for
    assert [ensemble_for(f, "cpu") for f in ("cnn", "resnet9", "mlp", None)] == ["loop", "loop", "vmap", "vmap"]
    assert ensemble_for("cnn", "cuda:0") == "vmap"
    assert RunConfig(task="fashion-mnist-cnn", device="cpu").compute.ensemble == "loop"
    assert RunConfig(task="digits-mlp", device="cpu").compute.ensemble == "vmap"
    pos, seeds = torch.arange(10), arm_seeds(0, 2)
    with use(Compute("cpu", "fp32")):
        vmapped = zoo_train.zoo_key(TASK, digits, pos, seeds)
    with use(Compute("cpu", "fp32", ensemble="loop")):
        looped = zoo_train.zoo_key(TASK, digits, pos, seeds)
    assert vmapped != looped
    assert Compute().key() == {"device": "cpu", "precision": "fp32"}  # vmapped keys are the ones they always were
    with pytest.raises(UnlearnkitError, match="ensemble must be one of vmap, loop"):
        Compute(ensemble="threads")


def test_a_looped_arm_holds_one_models_activations():
    from unlearnkit.budget import STATE_COPIES, StepProfile
    p = StepProfile(flops=1.0, activation_bytes=1000.0, param_bytes=100)
    assert p.arm_bytes(10, 64, "vmap") == 10 * (STATE_COPIES * 100 + 64 * 1000)
    assert p.arm_bytes(10, 64, "loop") == 10 * STATE_COPIES * 100 + 64 * 1000
    limit = p.arm_bytes(10, 64, "vmap")
    assert p.models_within(limit, 64, "vmap") == 10 and p.models_within(limit, 64, "loop") > 100


def test_a_looped_fit_resumes_from_its_checkpoint_bit_for_bit(digits):
    """An interrupted model-by-model loop resumes exactly as the vmapped one does (tests/test_zoo.py)."""
    from unlearnkit.engine import Forward
    from unlearnkit.models import build_model
    forward = Forward(build_model("cnn", (1, 8, 8), 10, channels=4))
    seeds = arm_seeds(0, 2)
    init = init_params("cnn", (1, 8, 8), 10, seeds, channels=4)
    stream = EpochStream(torch.arange(256), seeds, 64)  # 4 steps an epoch
    data, optim, checkpoints = (digits.x_train.view(-1, 1, 8, 8), digits.y_train), Optim("sgd", 0.05, 0.9, 5e-4), []
    with use(Compute("cpu", "fp32", ensemble="loop")):
        whole = fit(cross_entropy_loss(forward), init, {"train": stream}, data, 8, optim, on_epoch=checkpoints.append)
        resumed = fit(cross_entropy_loss(forward), init, {"train": stream}, data, 8, optim, resume=checkpoints[0])
    assert checkpoints[0].epoch == 1
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k


def test_metrics_overlapped_with_the_next_jobs_training_give_the_same_run(tmp_path, monkeypatch):
    """On a GPU a row's scores and metrics run in a thread beside the next job's training (`Later`); forced
    here on the CPU, the run's files are those of one job after another, bit for bit."""
    import unlearnkit.backends as backends
    base = dict(task="digits-logreg", models=3, methods=("none", "finetune", "ga"), bootstrap=20)
    plain = run(RunConfig(**base, cache_dir=str(tmp_path / "cache")), tmp_path / "plain")
    finishing = []
    real = backends.Later.__init__

    def counted(self, finish):  # every row's metrics go through a Later
        real(self, lambda: (finishing.append(threading.current_thread().name), finish())[1])
    monkeypatch.setattr(backends.Later, "__init__", counted)
    monkeypatch.setattr(backends.Local, "overlap", True)
    overlapped = run(RunConfig(**base, cache_dir=str(tmp_path / "fresh")), tmp_path / "overlapped")
    assert len(finishing) == 4 and all(name != threading.main_thread().name for name in finishing)
    for name in ("klom.npz", "scores.npz"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "overlapped" / name).read_bytes()

    def numbers(rows):  # all but the wall clock
        return [{k: v for k, v in r.items() if k not in ("seconds", "cost_vs_retrain")} for r in rows]
    assert numbers(plain["rows"] + [plain["noise_floor"]]) == numbers(overlapped["rows"] + [overlapped["noise_floor"]])


def test_overlapping_hands_back_every_finished_piece_in_order_and_before_a_failure():
    from unlearnkit.backends import Later, Local
    order = []

    def fn(i):
        if i == 3:
            raise KeyboardInterrupt  # killed during the device work of piece 3
        order.append(f"device {i}")
        return Later(lambda: (time.sleep(0.05), order.append(f"cpu {i}"), i * 10)[2]) if i != 1 else i * 10
    got, local = [], Local()
    local.overlap = True
    with pytest.raises(KeyboardInterrupt):
        for item, result in local.map(fn, range(5), Compute()):
            got.append((item, result))
    assert got == [(0, 0), (1, 10), (2, 20)]  # piece 2's metrics were finished and handed back before raising
    assert order.index("device 1") < order.index("cpu 0")  # piece 0's CPU part ran beside piece 1's device part


def test_several_rows_metrics_run_at_once_and_come_back_in_order():
    """Up to `in_flight` Later parts run together (each waits here for another one to start)."""
    from unlearnkit.backends import Later, Local
    meet = threading.Barrier(2, timeout=10)
    local = Local()
    local.overlap = True
    out = list(local.map(lambda i: Later(lambda: (meet.wait(), i)[1]), range(4), Compute()))
    assert out == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_a_rows_failing_metrics_raise_their_own_error_after_every_other_row_under_way():
    from unlearnkit.backends import Later, Local

    def fn(i):
        def finish():
            if i == 2:
                time.sleep(0.2)  # the next rows' device parts are under way meanwhile
                raise ValueError("row 2's metrics failed")
            return i
        return Later(finish)
    got, local = [], Local()
    local.overlap = True
    with pytest.raises(ValueError, match="row 2"):
        for item, result in local.map(fn, range(5), Compute()):
            got.append(result)
    assert got == [0, 1, 3, 4]  # the rows computed beside the failing one are kept too


def test_a_gpu_budget_counts_each_steps_launches(monkeypatch):
    """On a GPU small steps are launch-bound: the estimate adds STEP_SECONDS per optimizer step (budget.py)."""
    import unlearnkit.budget as budget
    from unlearnkit.budget import Budget, StepProfile
    b = Budget()
    b.add(StepProfile(flops=1e6, activation_bytes=1e3, param_bytes=1e4), models=10, examples=1000, epochs=2, batch=100)
    assert b.steps == 20 and b.seconds() == pytest.approx(b.flops / budget.training_rate())  # a CPU: FLOPs alone
    monkeypatch.setitem(budget.STEP_SECONDS, "cpu", 0.5)
    assert b.seconds() == pytest.approx(b.flops / budget.training_rate() + 10.0)
    with pytest.raises(UnlearnkitError, match=r"and 10 seconds launching 20 steps' kernels\), past the"):
        b.check(1e-6, None)  # the refusal explains the estimate it gives
