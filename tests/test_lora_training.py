"""Training with LoRA: only the adapters have gradients, accumulators and optimizer state;
the frozen base is handed to every step, never donated, one copy of it (DPO's and GRPO's
reference too); micro-batches and 8 devices give one device's run; resume is
bit-identical; a checkpoint names its base by path and hash and refuses a changed one."""
import json

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathft_jax import train
from mathft_jax.convert import checkpoints, lora_checkpoints
from mathft_jax.models import Decoder, lora, partitioning
from mathft_jax.models.decoder import abstract_params, init_params
from mathft_jax.training import harness as harness_lib, losses, objectives
from mathft_jax.training.optim import learning_rate_schedule, make_optimizer
from mathft_jax.training.trainer import abstract_state, init_state, jit_train_step, make_train_step
from train_utils import TINY, ArrayIterator

LORA = lora.LoraConfig(rank=4, alpha=8.0)
ONE_DEVICE = partitioning.Partitioner.single_device(TINY)


def _save_base(path, seed=0):
    params = nn.unbox(init_params(TINY, jax.random.PRNGKey(seed)))
    checkpoints.save_params(str(path), params)
    return str(path)


@pytest.fixture
def base_dir(tmp_path):
    return _save_base(tmp_path / "base")


def _train(tmp_path, name, base, steps=6, mesh=None, settings=LORA, **kw):
    kw.setdefault("data_iterator", ArrayIterator())
    return train.train(model_dir=str(tmp_path / name), total_steps=steps, batch_size=8,
                       sequence_length=16, model=TINY, progress=False, init_checkpoint=base,
                       lora=settings,
                       mesh_fn=mesh or (lambda: partitioning.make_mesh(devices=jax.devices()[:1])),
                       **kw)


def _losses(model_dir):
    from mathft_jax.core.metrics_writer import read_metrics
    return np.array([r["train/loss"] for r in read_metrics(model_dir)])


def _adapters(model_dir, settings=LORA):
    return jax.device_get(lora_checkpoints.load_adapters(model_dir, settings, TINY, ONE_DEVICE))


# ----------------------------------------------------------------------------- the step


def test_only_the_adapters_have_gradients_and_optimizer_state():
    opt, sched = make_optimizer(), learning_rate_schedule()
    abstract, sh = abstract_state(TINY, opt, ONE_DEVICE, LORA)
    adapter_tree = nn.unbox(lora.adapter_boxes(LORA, TINY, abstract_params(TINY)))
    assert (jax.tree_util.tree_structure(abstract.params)
            == jax.tree_util.tree_structure(adapter_tree))
    base_shapes = {x.shape for x in jax.tree_util.tree_leaves(nn.unbox(abstract_params(TINY)))}
    opt_arrays = [x for x in jax.tree_util.tree_leaves(abstract.opt_state) if x.ndim]
    assert len(opt_arrays) == 2 * len(jax.tree_util.tree_leaves(adapter_tree))  # Adam mu, nu
    assert not {x.shape for x in opt_arrays} & base_shapes

    base = nn.unbox(init_params(TINY, jax.random.PRNGKey(0)))
    state = init_state(TINY, opt, sh, seed=0, lora=LORA)
    batch = next(ArrayIterator())
    new, metrics = jax.jit(make_train_step(TINY, opt, sched, lora=LORA))(state, batch, base)
    assert jax.tree_util.tree_structure(new.params) == jax.tree_util.tree_structure(adapter_tree)
    assert all(np.any(x) for p, x in jax.tree_util.tree_leaves_with_path(new.params)
               if p[-1].key == "b")  # the zero `b`s moved: the adapters train

    def loss(adapters):  # the gradient of the adapters alone, by hand
        sums = objectives.lm_objective(Decoder(TINY), lora.adapted(base, adapters, LORA, TINY),
                                       batch)
        return sums["loss"] / sums["weight"]
    want = optax_norm(jax.grad(loss)(state.params))
    assert float(metrics["grad_norm"]) == pytest.approx(float(want), rel=1e-5)
    # step 0 is the base model: the loss is the base's own
    base_sums = objectives.lm_objective(Decoder(TINY), base, batch)
    assert float(metrics["loss"]) == pytest.approx(
        float(base_sums["loss"] / base_sums["weight"]), rel=1e-6)


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def test_the_jitted_step_donates_the_adapters_never_the_base(base_dir):
    opt, sched = make_optimizer(), learning_rate_schedule()
    part = partitioning.Partitioner.create(TINY, partitioning.make_mesh(devices=jax.devices()[:1]))
    _, sh = abstract_state(TINY, opt, part, LORA)
    base = checkpoints.load_params(base_dir, TINY, part)
    state = init_state(TINY, opt, sh, seed=0, lora=LORA)
    with part.context():
        step = jit_train_step(TINY, opt, sched, objectives.lm_objective, 1, part, sh, LORA,
                              part.param_shardings(TINY))
        batch = {k: part.to_global(v) for k, v in next(ArrayIterator()).items()}
        old_adapter = jax.tree_util.tree_leaves(state.params)[0]
        step(state, batch, base)
    assert old_adapter.is_deleted()
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(base))


def test_micro_batches_with_adapters_equal_one_big_batch():
    opt, sched = make_optimizer(), learning_rate_schedule()
    _, sh = abstract_state(TINY, opt, ONE_DEVICE, LORA)
    base = nn.unbox(init_params(TINY, jax.random.PRNGKey(0)))
    state = init_state(TINY, opt, sh, seed=0, lora=LORA)
    batch = next(ArrayIterator())
    batch["decoder_loss_weights"][::3, 5:9] = 0
    s1, m1 = jax.jit(make_train_step(TINY, opt, sched, lora=LORA))(state, batch, base)
    s4, m4 = jax.jit(make_train_step(TINY, opt, sched, micro_batches=4, lora=LORA))(
        state, batch, base)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                           s1.params, s4.params)


# ----------------------------------------------------------------------------- runs


@pytest.mark.slow
def test_eight_devices_give_the_loss_curve_of_one(tmp_path, base_dir):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    one = _train(tmp_path, "one", base_dir, checkpoint_every=1000)
    eight = _train(tmp_path, "eight", base_dir, checkpoint_every=1000,
                   mesh=lambda: partitioning.make_mesh(data=2, fsdp=2, tensor=2))
    np.testing.assert_allclose(_losses(eight.model_dir), _losses(one.model_dir), rtol=2e-5)
    assert _losses(one.model_dir)[-1] < _losses(one.model_dir)[0]  # the adapters learn
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                           _adapters(eight.model_dir), _adapters(one.model_dir))


def test_resume_with_dropout_and_micro_batches_is_bit_identical(tmp_path, base_dir):
    settings = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.1)
    run = dict(settings=settings, micro_batches=2, checkpoint_every=3)
    whole = _train(tmp_path, "whole", base_dir, steps=8, **run)
    part = _train(tmp_path, "part", base_dir, steps=5, **run)
    rest = _train(tmp_path, "part", base_dir, steps=8, **run)
    assert (part.final_step, rest.start_step) == (5, 5)
    assert checkpoints.tree_equal(_adapters(whole.model_dir, settings),
                                  _adapters(rest.model_dir, settings))
    np.testing.assert_array_equal(_losses(whole.model_dir), _losses(rest.model_dir)[-8:])
    other_seed = _train(tmp_path, "seed", base_dir, steps=2, seed=1, **run)
    assert not np.array_equal(_losses(other_seed.model_dir), _losses(whole.model_dir)[:2])


def test_checkpoint_names_its_base_and_refuses_a_changed_one(tmp_path, base_dir):
    run = _train(tmp_path, "run", base_dir, steps=2)
    record = json.loads((tmp_path / "run" / lora_checkpoints.RECORD).read_text())
    assert record["base"]["params"] == checkpoints.resolve_params_dir(base_dir)
    assert record["base"]["hash"] == lora_checkpoints.content_hash(record["base"]["params"])
    assert lora_checkpoints.settings_from(record["lora"]) == LORA
    # loading serves the base plus the adapters, merged or not
    merged = lora_checkpoints.load_model(run.model_dir, TINY, ONE_DEVICE)
    unmerged = lora_checkpoints.load_model(run.model_dir, TINY, ONE_DEVICE, merge=False)
    assert isinstance(unmerged, lora.Adapted)
    tokens = jnp.arange(1, 13)[None]
    np.testing.assert_allclose(Decoder(TINY).apply({"params": merged}, tokens),
                               lora.apply(Decoder(TINY), unmerged, tokens), atol=1e-5)

    import shutil
    shutil.rmtree(base_dir)
    _save_base(base_dir, seed=5)  # another model at the same path
    with pytest.raises(lora_checkpoints.BaseChangedError, match="LoRA base changed"):
        lora_checkpoints.load_model(run.model_dir, TINY, ONE_DEVICE)
    with pytest.raises(lora_checkpoints.BaseChangedError, match="LoRA base changed"):
        _train(tmp_path, "run", base_dir, steps=4)
    with pytest.raises(ValueError, match="lora settings"):  # a resume with other settings
        _train(tmp_path, "run", base_dir, steps=4, settings=lora.LoraConfig(rank=2))


def test_a_lora_start_continues_its_adapters_or_merges_them_into_the_base(tmp_path, base_dir):
    first = _train(tmp_path, "first", base_dir, steps=3)
    cont = _train(tmp_path, "cont", first.model_dir, steps=0)
    cont_record = lora_checkpoints.read_record(cont.model_dir)
    assert cont_record["base"] == lora_checkpoints.read_record(first.model_dir)["base"]
    assert checkpoints.tree_equal(_adapters(cont.model_dir), _adapters(first.model_dir))

    merged = _train(tmp_path, "merged", first.model_dir, steps=0,
                    settings=lora.LoraConfig(rank=4, alpha=8.0, start="merge"))
    base = lora_checkpoints.read_record(merged.model_dir)["base"]
    assert base["lora"] == lora_checkpoints.settings_dict(LORA)
    assert base["base"] == cont_record["base"]
    assert all(not np.any(x) for p, x in jax.tree_util.tree_leaves_with_path(
        _adapters(merged.model_dir)) if p[-1].key == "b")  # fresh adapters on the merged base
    want = lora_checkpoints.load_model(first.model_dir, TINY, ONE_DEVICE)
    got = lora_checkpoints.load_model(merged.model_dir, TINY, ONE_DEVICE)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got, want)


def test_without_init_checkpoint_the_seed_init_is_saved_as_the_base(tmp_path):
    run = _train(tmp_path, "scratch", None, steps=1)
    record = lora_checkpoints.read_record(run.model_dir)
    assert record["base"]["params"].startswith(str(tmp_path / "scratch" / "base"))
    seed_init = nn.unbox(init_params(TINY, jax.random.PRNGKey(0)))
    saved = jax.device_get(checkpoints.load_params(record["base"]["params"], TINY, ONE_DEVICE))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                           saved, seed_init)  # jitted there: the last bit may differ


class _Spy:
    """Records the frozen base handed to every step of a harness."""

    def __init__(self, monkeypatch):
        self.bases, self.loads = [], 0
        real_jit, real_load = harness_lib.jit_train_step, lora_checkpoints.load_base

        def jit(*args, **kwargs):
            step = real_jit(*args, **kwargs)

            def spied(state, batch, *base):
                self.bases.append(base)
                return step(state, batch, *base)
            return spied

        def load(*args, **kwargs):
            self.loads += 1
            return real_load(*args, **kwargs)
        monkeypatch.setattr(harness_lib, "jit_train_step", jit)
        monkeypatch.setattr(lora_checkpoints, "load_base", load)

    def one_base(self):
        """The single base every step got (the same buffers each time)."""
        assert self.loads == 1 and self.bases
        ids = {tuple(id(x) for x in jax.tree_util.tree_leaves(b)) for b in self.bases}
        assert len(ids) == 1 and all(len(b) == 1 for b in self.bases)
        return self.bases[0][0]


class _PairBatches:
    """DPO rows (chosen, rejected) with the base's log-likelihoods as the reference."""

    def __init__(self, base):
        rng = np.random.default_rng(1)
        tokens = rng.integers(2, TINY.vocab_size, (8, 13)).astype(np.int32)
        weights = np.zeros((8, 12), np.float32)
        weights[:, 5:] = 1
        self.batch = {"decoder_input_tokens": tokens[:, :-1],
                      "decoder_target_tokens": tokens[:, 1:], "decoder_loss_weights": weights,
                      "pair_id": np.repeat(np.arange(4, dtype=np.int32), 2)}
        logits = Decoder(TINY).apply({"params": base}, self.batch["decoder_input_tokens"])
        self.batch["ref_log_likelihood"] = np.asarray(losses.sequence_log_likelihood(
            logits, self.batch["decoder_target_tokens"], weights))
        self.k = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.k += 1
        return dict(self.batch)

    def get_state(self):
        return {"k": self.k}

    def set_state(self, state):
        self.k = state["k"]


def test_dpo_with_adapters_holds_one_base_and_starts_at_its_reference(tmp_path, base_dir,
                                                                       monkeypatch):
    spy = _Spy(monkeypatch)
    base = jax.device_get(checkpoints.load_params(base_dir, TINY, ONE_DEVICE))
    gin.bind_parameter("learning_rate_schedule.peak", 1e-2)
    result = train.train(model_dir=str(tmp_path / "dpo"), total_steps=3, batch_size=8,
                         sequence_length=12, model=TINY, progress=False, pack=False,
                         init_checkpoint=base_dir, lora=LORA,
                         objective=objectives.dpo_objective, data_iterator=_PairBatches(base),
                         mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]))
    assert result.final_step == 3
    assert checkpoints.tree_equal(jax.device_get(spy.one_base()), base)
    from mathft_jax.core.metrics_writer import read_metrics
    margins = [r["train/reward_margin"] for r in read_metrics(result.model_dir)]
    assert margins[0] == pytest.approx(0.0, abs=1e-6)  # base + fresh adapters = the reference
    assert margins[-1] > 1e-4


@pytest.mark.slow
def test_grpo_with_adapters_takes_its_reference_from_the_one_base(tmp_path, base_dir,
                                                                  monkeypatch):
    from test_grpo import CharVocab, PROBLEMS
    from mathft_jax.rl import loop
    spy = _Spy(monkeypatch)
    references = []
    real_batch = loop._training_batch

    def training_batch(rows, reward, scale_std, params, reference, *args):
        references.append(reference)
        assert isinstance(params, lora.Adapted) and params.base is reference
        return real_batch(rows, reward, scale_std, params, reference, *args)
    monkeypatch.setattr(loop, "_training_batch", training_batch)
    gin.bind_parameter("reward_weights.weights", {"digits": 1.0})
    gin.bind_parameter("learning_rate_schedule.peak", 3e-3)
    result = loop.grpo(model_dir=str(tmp_path / "grpo"), problems=PROBLEMS, iterations=2,
                       prompts_per_iteration=2, num_generations=4, max_decode_len=12,
                       sequence_length=48, steps_per_iteration=2, checkpoint_every=1,
                       async_checkpoints=False, model=TINY, vocabulary=CharVocab(),
                       mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]),
                       progress=False, seed=1, kl_coef=0.05, length_bucket=16,
                       init_checkpoint=base_dir, lora=LORA)
    assert result.final_iteration == 2
    base = spy.one_base()
    assert len(references) == 2 and all(r is base for r in references)
    from mathft_jax.core.metrics_writer import read_metrics
    rows = read_metrics(result.model_dir)
    assert rows[0]["grpo/kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts at the base
    assert rows[1]["grpo/kl"] > 0
