"""World model (diwa_jax/world_model): shapes, init, straight-through sampling, KL balancing against numpy,
scan vs step-by-step loops, resets, open-loop error, and a tiny training run."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diwa_jax import specs
from diwa_jax.types import Latent
from diwa_jax.world_model import model as wm
from diwa_jax.world_model.rssm import balanced_kl_loss, sample_onehot
from experiments.calvin import get_config

B, T = 2, 5


@functools.lru_cache(maxsize=None)
def tiny_spec(variant: str = "vision") -> wm.WorldModelSpec:
    config = get_config("tiny")
    config.wm.variant = variant
    return specs.world_model_spec(config)


@functools.lru_cache(maxsize=None)
def tiny_params(variant: str = "vision"):
    return wm.init_params(jax.random.key(0), tiny_spec(variant))


def random_batch(batch_size=B, steps=T, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "rgb_static": rng.integers(0, 256, (batch_size, steps, 64, 64, 3), dtype=np.uint8),
        "rgb_gripper": rng.integers(0, 256, (batch_size, steps, 64, 64, 3), dtype=np.uint8),
        "proprio": rng.random((batch_size, steps, 18), dtype=np.float32),
        "state": rng.random((batch_size, steps, 51), dtype=np.float32),
        "prev_action": rng.uniform(-1, 1, (batch_size, steps, 7)).astype(np.float32),
        "reset": np.zeros((batch_size, steps), bool),
    }


def moving_square_batch(batch_size=4, steps=8):
    """A square that moves by the (previous) action: learnable dynamics for the training test."""
    rng = np.random.default_rng(0)
    static = np.zeros((batch_size, steps, 64, 64, 3), np.uint8)
    gripper = np.zeros_like(static)
    actions = np.zeros((batch_size, steps, 7), np.float32)
    actions[:, 1:, :2] = rng.choice([-1.0, 1.0], (batch_size, steps - 1, 2))
    actions[:, :, 6] = 1.0
    pos = rng.integers(16, 40, (batch_size, 2))
    for t in range(steps):
        pos = np.clip(pos + 3 * actions[:, t, :2].astype(int), 0, 52)
        for b in range(batch_size):
            y, x = pos[b]
            static[b, t, y:y + 12, x:x + 12] = (255, 64, 0)
            gripper[b, t, 52 - y:64 - y, 52 - x:64 - x] = (0, 128, 255)
    proprio = np.zeros((batch_size, steps, 18), np.float32)
    proprio[..., :2] = np.stack([pos] * steps, 1) / 64.0
    reset = np.zeros((batch_size, steps), bool)
    reset[:, 0] = True
    return {"rgb_static": static, "rgb_gripper": gripper, "proprio": proprio,
            "state": np.zeros((batch_size, steps, 51), np.float32), "prev_action": actions, "reset": reset}


def random_latent(spec, batch_size, seed):
    rng = np.random.default_rng(seed)
    index = rng.integers(0, spec.classes, (batch_size, spec.stoch))
    return Latent(deter=jnp.asarray(rng.normal(size=(batch_size, spec.deter)), jnp.float32),
                  stoch=jnp.asarray(np.eye(spec.classes, dtype=np.float32)[index]))


# ---- shapes and init ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["vision", "hybrid", "state"])
def test_shapes_and_loss_every_variant(variant):
    spec = dataclasses.replace(tiny_spec(variant), kl_weight=0.7, image_weight=0.5, state_weight=2.0)
    params = tiny_params(variant)
    batch = random_batch()

    @jax.jit
    def run(params, batch):
        loss, (metrics, last) = wm.loss_fn(params, spec, batch, wm.initial_latent(B, spec), jax.random.key(1))
        imagined = wm.imagine(params, spec, last, batch["prev_action"], jax.random.key(2))
        return wm.encode(params, spec, batch), loss, metrics, last, imagined, wm.decode(params, spec, imagined.feature())

    embed, loss, metrics, last, imagined, decoded = run(params, batch)
    image = 32 * spec.cnn_depth if variant != "state" else 0
    assert embed.shape == (B, T, image + (18 if variant == "vision" else spec.state_embed)) == (B, T, spec.embed_dim)
    assert last.deter.shape == (B, spec.deter) and last.stoch.shape == (B, spec.stoch, spec.classes)
    assert imagined.feature().shape == (B, T, spec.feature_dim)
    np.testing.assert_array_equal(np.asarray(imagined.stoch).sum(-1), 1.0)  # exactly one-hot per categorical
    expected = {"rgb_static": (B, T, 64, 64, 3), "rgb_gripper": (B, T, 64, 64, 3), "state": (B, T, 51)}
    keys = {"vision": ["rgb_static", "rgb_gripper"], "hybrid": ["rgb_static", "rgb_gripper", "state"],
            "state": ["state"]}[variant]
    assert {k: v.shape for k, v in decoded.items()} == {k: expected[k] for k in keys}
    # the loss is the weighted sum of the terms the variant has
    assert ("image_loss" in metrics) == (variant != "state") and ("state_loss" in metrics) == (variant != "vision")
    want = 0.7 * metrics["kl_loss"] + 0.5 * metrics.get("image_loss", 0.0) + 2.0 * metrics.get("state_loss", 0.0)
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)


def test_paper_sizes_match_spec():
    """Parameter shapes at paper size (spec 2.1), without computing anything."""
    spec = specs.world_model_spec(get_config())
    shapes = jax.eval_shape(lambda k: wm.init_params(k, spec), jax.random.key(0))
    enc, rssm, dec = shapes["encoder"], shapes["rssm"], shapes["decoder"]
    tower = enc["rgb_static_tower"]
    assert [tower[f"Conv_{i}"]["kernel"].shape for i in range(4)] == [
        (4, 4, 3, 48), (4, 4, 48, 96), (4, 4, 96, 192), (4, 4, 192, 384)]
    assert enc["fuse"]["kernel"].shape == (3072, 1536) and spec.embed_dim == 1554
    assert rssm["stoch_in"]["kernel"].shape == (1024, 1000) and "bias" not in rssm["action_in"]
    assert rssm["action_in"]["kernel"].shape == (7, 1000)
    assert rssm["gru"]["input"]["kernel"].shape == (1000, 3 * 1024)
    assert rssm["gru"]["recurrent"]["kernel"].shape == (1024, 3 * 1024)
    assert rssm["post_embed_in"]["kernel"].shape == (1554, 1000) and "bias" not in rssm["post_embed_in"]
    assert rssm["prior_out"]["kernel"].shape == (1000, 1024)
    # one Linear shared by both cameras' decoders
    assert sorted(dec) == ["rgb_gripper_deconv", "rgb_static_deconv", "shared_linear"]
    assert dec["shared_linear"]["kernel"].shape == (2048, 1536)
    deconv = dec["rgb_static_deconv"]
    assert [deconv[f"ConvTranspose_{i}"]["kernel"].shape for i in range(4)] == [
        (5, 5, 1536, 192), (5, 5, 192, 96), (6, 6, 96, 48), (6, 6, 48, 3)]
    hybrid = jax.eval_shape(lambda k: wm.init_params(k, dataclasses.replace(spec, variant="hybrid")),
                            jax.random.key(0))
    assert hybrid["encoder"]["state_mlp"]["hidden"]["kernel"].shape == (51, 400)
    assert hybrid["encoder"]["state_mlp"]["out"]["kernel"].shape == (400, 512)
    assert hybrid["decoder"]["state_head"]["out"]["kernel"].shape == (400, 51)
    assert hybrid["rssm"]["post_embed_in"]["kernel"].shape == (1536 + 512, 1000)


def test_init_xavier_orthogonal_zero_bias():
    params = tiny_params("hybrid")
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in flat:
        name = jax.tree_util.keystr(path)
        if name.endswith("['bias']") and "Norm" not in name and "norm" not in name:
            assert not np.any(np.asarray(leaf)), name
    recurrent = np.asarray(params["rssm"]["gru"]["recurrent"]["kernel"])
    deter = recurrent.shape[0]
    for gate in np.split(recurrent, 3, axis=1):
        np.testing.assert_allclose(gate.T @ gate, np.eye(deter), atol=1e-5)
    # Xavier-uniform: |w| <= sqrt(6 / (fan_in + fan_out)), per gate for the fused GRU input kernel.
    gru_in = np.asarray(params["rssm"]["gru"]["input"]["kernel"])
    assert np.abs(gru_in).max() <= np.sqrt(6 / (gru_in.shape[0] + deter)) + 1e-6
    conv = np.asarray(params["encoder"]["rgb_static_tower"]["Conv_1"]["kernel"])
    kh, kw, cin, cout = conv.shape
    bound = np.sqrt(6 / (kh * kw * (cin + cout)))
    assert np.abs(conv).max() <= bound + 1e-6 and np.abs(conv).max() > 0.8 * bound


def test_bad_inputs_name_the_key():
    spec, params = tiny_spec(), tiny_params()
    batch = random_batch()
    with pytest.raises(TypeError, match="rgb_static"):
        wm.encode(params, spec, {**batch, "rgb_static": batch["rgb_static"].astype(np.float32)})
    with pytest.raises(KeyError, match="proprio"):
        wm.encode(params, spec, {k: v for k, v in batch.items() if k != "proprio"})
    with pytest.raises(ValueError, match="rgb_gripper"):
        wm.encode(params, spec, {**batch, "rgb_gripper": batch["rgb_gripper"][..., :32, :32, :]})
    with pytest.raises(ValueError, match="context"):
        wm.open_loop(params, spec, batch, 3, 3, jax.random.key(0))


# ---- sampling and KL -----------------------------------------------------------------------------------------

def test_straight_through_sample_value_and_gradient():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)
    temperature = 1.7

    @jax.jit
    def run(logits):
        sample_loss = lambda x: jnp.sum(weights * sample_onehot(x, jax.random.key(2), temperature))
        softmax_loss = lambda x: jnp.sum(weights * jax.nn.softmax(x / temperature))
        return sample_onehot(logits, jax.random.key(2), temperature), jax.grad(sample_loss)(logits), \
            jax.grad(softmax_loss)(logits)

    sample, grad, expected = run(logits)
    np.testing.assert_array_equal(np.asarray(sample).sum(-1), 1.0)
    assert set(np.unique(np.asarray(sample))) == {0.0, 1.0}
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(grad)).min() > 0


def test_reconstruction_loss_reaches_posterior_through_the_sample():
    """With the KL weight 0 the posterior head only affects the loss through the sampled z -> decoder.
    (State variant: the same RSSM and sampling, without conv compile time.)"""
    spec = dataclasses.replace(tiny_spec("state"), kl_weight=0.0)
    grads = jax.jit(jax.grad(lambda p: wm.loss_fn(p, spec, random_batch(), wm.initial_latent(B, spec),
                                                     jax.random.key(3))[0]))(tiny_params("state"))
    post_grad = np.asarray(grads["rssm"]["post_out"]["kernel"])
    assert np.all(np.isfinite(post_grad)) and np.abs(post_grad).max() > 0


def _np_kl(q_logits, p_logits):
    """Per-block KL(q || p) and the log-probabilities, numpy float64."""
    log_q = q_logits - np.log(np.exp(q_logits).sum(-1, keepdims=True))
    log_p = p_logits - np.log(np.exp(p_logits).sum(-1, keepdims=True))
    return (np.exp(log_q) * (log_q - log_p)).sum(-1), log_q, log_p


def test_kl_balancing_against_numpy():
    rng = np.random.default_rng(0)
    post = rng.normal(size=(2, 3, 4, 5))  # (B, T, S, C)
    prior = rng.normal(size=(2, 3, 4, 5))
    alpha = 0.8
    kl_blocks, log_q, log_p = _np_kl(post, prior)
    kl_per_step = kl_blocks.sum(-1)  # summed over the 4 categoricals
    # Both balanced terms have the KL's value, so the loss value is the mean KL.
    loss, kl = balanced_kl_loss(jnp.asarray(post, jnp.float32), jnp.asarray(prior, jnp.float32), alpha)
    np.testing.assert_allclose(float(loss), kl_per_step.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(kl), kl_per_step.mean(), rtol=1e-5)
    # Gradients: prior gets alpha * dKL/dp = alpha * (p - q); posterior gets (1 - alpha) * dKL/dq,
    # dKL/dq_logits = q * (log q - log p - KL_block); both divided by the B*T average.
    q, p = np.exp(log_q), np.exp(log_p)
    count = post.shape[0] * post.shape[1]
    want_prior = alpha * (p - q) / count
    want_post = (1 - alpha) * q * (log_q - log_p - kl_blocks[..., None]) / count
    grad_post, grad_prior = jax.grad(lambda a, b: balanced_kl_loss(a, b, alpha)[0], argnums=(0, 1))(
        jnp.asarray(post, jnp.float32), jnp.asarray(prior, jnp.float32))
    np.testing.assert_allclose(grad_prior, want_prior, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(grad_post, want_post, rtol=1e-4, atol=1e-7)
    # Free nats above the KL clamp both terms: constant loss, no gradient.
    free = float(kl_per_step.mean()) + 1.0
    loss, _ = balanced_kl_loss(jnp.asarray(post), jnp.asarray(prior), alpha, free_nats=free)
    np.testing.assert_allclose(float(loss), free, rtol=1e-6)
    grads = jax.grad(lambda a, b: balanced_kl_loss(a, b, alpha, free)[0], argnums=(0, 1))(
        jnp.asarray(post), jnp.asarray(prior))
    assert all(not np.any(np.asarray(g)) for g in grads)


# ---- time loops and resets -------------------------------------------------------------------------------------

def test_observe_scan_equals_obs_step_loop():
    spec, params = tiny_spec("state"), tiny_params("state")  # the scan does not depend on the encoder
    batch = random_batch()
    batch["reset"][:, 0] = True
    batch["reset"][1, 3] = True  # a reset in the middle of one stream
    init = random_latent(spec, B, seed=5)
    key = jax.random.key(7)
    posts, prior_logits, post_logits = jax.jit(functools.partial(wm.observe, spec=spec))(
        params, obs_seq=batch, prev_actions=batch["prev_action"], resets=batch["reset"], init_latent=init, key=key)

    @jax.jit
    def step(latent, obs, prev_action, reset, step_key):
        return wm.obs_step(params, spec, latent, prev_action, wm.encode(params, spec, obs), reset, step_key)

    latent = init
    for t, step_key in enumerate(jax.random.split(key, T)):
        latent, prior_t, post_t = step(latent, {"state": batch["state"][:, t]}, batch["prev_action"][:, t],
                                       batch["reset"][:, t], step_key)
        np.testing.assert_allclose(posts.deter[:, t], latent.deter, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(posts.stoch[:, t], latent.stoch)
        np.testing.assert_allclose(prior_logits[:, t], prior_t, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(post_logits[:, t], post_t, rtol=1e-4, atol=1e-4)


def test_imagine_scan_equals_img_step_loop():
    spec, params = tiny_spec(), tiny_params()
    start = random_latent(spec, B, seed=3)
    actions = jnp.asarray(random_batch()["prev_action"])
    key = jax.random.key(11)
    imagined = jax.jit(functools.partial(wm.imagine, spec=spec))(params, latent=start, actions=actions, key=key)
    step = jax.jit(functools.partial(wm.img_step, spec=spec))
    latent = start
    for t, step_key in enumerate(jax.random.split(key, T)):
        latent = step(params, latent=latent, action=actions[:, t], key=step_key)
        np.testing.assert_allclose(imagined.deter[:, t], latent.deter, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(imagined.stoch[:, t], latent.stoch)
    # a single unbatched latent works too (for vmap over envs)
    single = step(params, latent=jax.tree.map(lambda x: x[0], start), action=actions[0, 0], key=key)
    assert single.deter.shape == (spec.deter,)


def test_reset_zeros_the_state():
    spec, params = tiny_spec(), tiny_params()
    old = random_latent(spec, B, seed=1)
    action = jnp.asarray(random_batch()["prev_action"][:, 0])
    embed = jnp.asarray(np.random.default_rng(2).normal(size=(B, spec.embed_dim)), jnp.float32)
    step = jax.jit(functools.partial(wm.obs_step, spec=spec))
    key = jax.random.key(4)
    reset_out = step(params, latent=old, prev_action=action, embed=embed, reset=jnp.array([True, False]), key=key)
    fresh_out = step(params, latent=wm.initial_latent(B, spec), prev_action=action, embed=embed,
                     reset=jnp.array([False, False]), key=key)
    kept_out = step(params, latent=old, prev_action=action, embed=embed, reset=jnp.array([False, False]), key=key)
    for got, fresh, kept in zip(jax.tree.leaves(reset_out), jax.tree.leaves(fresh_out), jax.tree.leaves(kept_out)):
        np.testing.assert_allclose(got[0], fresh[0], rtol=1e-6, atol=1e-6)  # reset row = from zeros
        np.testing.assert_allclose(got[1], kept[1], rtol=1e-6, atol=1e-6)  # other row untouched
    assert not np.allclose(fresh_out[0].deter[1], kept_out[0].deter[1])  # the old state did matter


# ---- open loop ------------------------------------------------------------------------------------------------

def test_openloop_error_against_numpy():
    spec, params = tiny_spec(), tiny_params()
    batch = random_batch(steps=5)
    context, horizon = 2, 3
    key = jax.random.key(9)
    predicted, err = jax.jit(lambda p, b: (wm.open_loop(p, spec, b, context, horizon, key),
                                           wm.openloop_error(p, spec, b, context, horizon, key)))(params, batch)
    assert predicted["rgb_static"].shape == (B, horizon, 64, 64, 3)
    to_unit = lambda x: x.astype(np.float64) / 127.5 - 1.0
    truth = {c: to_unit(batch[c][:, context:]) for c in ("rgb_static", "rgb_gripper")}
    model_mse = np.mean([np.mean((np.asarray(predicted[c]) - truth[c]) ** 2) for c in truth])
    baseline = np.mean([np.mean((to_unit(batch[c][:, context - 1:context]) - truth[c]) ** 2) for c in truth])
    np.testing.assert_allclose(float(err["image_mse"]), model_mse, rtol=1e-4)
    np.testing.assert_allclose(float(err["baseline_image_mse"]), baseline, rtol=1e-4)
    np.testing.assert_allclose(float(err["image_mse_ratio"]), model_mse / baseline, rtol=1e-4)
    assert err["image_mse_per_step"].shape == (horizon,)


# ---- training -------------------------------------------------------------------------------------------------

def train_on_moving_square(spec, steps: int, metric: str):
    """(final state, the jitted step, ``metric`` per step) of ``steps`` steps on the moving square."""
    batch = moving_square_batch()
    state = wm.create_train_state(jax.random.key(0), spec, batch_size=4)
    train_step = wm.make_train_step(spec)
    losses = []
    for _ in range(steps):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics[metric]))
    return state, train_step, losses


def test_train_step_jits_once_and_loss_decreases():
    spec = dataclasses.replace(tiny_spec(), lr=2e-3)
    state, train_step, losses = train_on_moving_square(spec, 30, "loss")
    assert train_step._cache_size() == 1  # traced and compiled once
    assert int(state.step) == 30
    assert np.all(np.isfinite(losses)), losses
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    assert float(jnp.abs(state.carry.deter).max()) > 0  # the last posterior is carried
    assert state.carry.stoch.shape == (4, spec.stoch, spec.classes)


def test_optimizer_decays_every_parameter():
    """AdamW's decoupled weight decay reaches every leaf (LayerNorm and biases included, no mask): with zero
    gradients the first update is exactly -lr * weight_decay * param."""
    spec = dataclasses.replace(tiny_spec("state"), lr=1e-2, weight_decay=0.5)
    params = jax.tree.map(lambda x: x + 1.0, tiny_params("state"))  # nonzero biases too
    optimizer = wm.make_optimizer(spec)
    updates = jax.jit(lambda p: optimizer.update(jax.tree.map(jnp.zeros_like, p), optimizer.init(p), p)[0])(params)
    for update, param in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        np.testing.assert_allclose(update, -1e-2 * 0.5 * param, rtol=1e-5, atol=1e-8)


# ---- inverse dynamics (config.wm.inverse_dynamics_weight) ---------------------------------------------------

def _np_elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def test_inverse_dynamics_loss_against_numpy():
    """a_{t-1} from the camera embeddings of t-1 and t, 0.5 * SSE averaged over the pairs inside one episode:
    the pair that crosses a reset is left out; the total loss adds the weighted term."""
    base = dataclasses.replace(tiny_spec(), kl_weight=0.7)
    spec = dataclasses.replace(base, inverse_dynamics_weight=0.3)
    params = wm.init_params(jax.random.key(3), spec)
    assert "inverse_dynamics" not in tiny_params() and "inverse_dynamics" in params
    batch = random_batch(steps=4)
    batch["reset"][1, 2] = True  # pair (1, 2) of stream 1 crosses an episode start
    init = wm.initial_latent(B, spec)
    loss, (metrics, _) = jax.jit(lambda p: wm.loss_fn(p, spec, batch, init, jax.random.key(1)))(params)

    embed = np.asarray(wm.encode(params, spec, batch))[..., :spec.image_embed_dim]
    head = jax.tree.map(np.asarray, params["inverse_dynamics"])
    terms = []
    for b in range(B):
        for t in range(1, 4):
            if batch["reset"][b, t]:
                continue
            x = np.concatenate([embed[b, t - 1], embed[b, t]])
            hidden = _np_elu(x @ head["hidden"]["kernel"] + head["hidden"]["bias"])
            predicted = hidden @ head["out"]["kernel"] + head["out"]["bias"]
            terms.append(0.5 * np.sum(np.square(predicted - batch["prev_action"][b, t])))
    assert len(terms) == 5
    np.testing.assert_allclose(metrics["inverse_dynamics_loss"], np.mean(terms), rtol=1e-4)
    _, (elbo_metrics, _) = wm.loss_fn(tiny_params(), base, batch, init, jax.random.key(1))
    assert "inverse_dynamics_loss" not in elbo_metrics
    want = 0.7 * metrics["kl_loss"] + metrics["image_loss"] + 0.3 * metrics["inverse_dynamics_loss"]
    np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_inverse_dynamics_reads_only_the_cameras():
    """Its gradient reaches the camera towers and its own head, not the RSSM or the decoder, and proprio
    (which holds the pose deltas, i.e. the action) does not change it."""
    spec = dataclasses.replace(tiny_spec(), inverse_dynamics_weight=1.0)
    params = wm.init_params(jax.random.key(3), spec)
    batch = random_batch()

    def id_loss(p, b):
        embed = wm.encode(p, spec, b)
        return wm.inverse_dynamics_loss(p, spec, embed, b["prev_action"], b["reset"])

    grads = jax.jit(jax.grad(id_loss))(params, batch)
    norm = lambda tree: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))  # noqa: E731
    assert norm(grads["rssm"]) == 0.0 and norm(grads["decoder"]) == 0.0
    assert norm(grads["encoder"]["rgb_static_tower"]) > 0 and norm(grads["encoder"]["rgb_gripper_tower"]) > 0
    assert norm(grads["inverse_dynamics"]) > 0
    other = dict(batch, proprio=batch["proprio"] + 5.0)
    np.testing.assert_array_equal(id_loss(params, batch), id_loss(params, other))


def test_inverse_dynamics_needs_images():
    with pytest.raises(ValueError, match="inverse_dynamics_weight"):
        dataclasses.replace(tiny_spec("state"), inverse_dynamics_weight=0.5)


def test_inverse_dynamics_learns_the_moving_square():
    """On the moving square the action is visible in consecutive images; training takes the term well below
    the best constant prediction (0.5 * the actions' summed variance: 1.0, the gripper is constant)."""
    spec = dataclasses.replace(tiny_spec(), lr=2e-3, inverse_dynamics_weight=10.0)
    _, _, losses = train_on_moving_square(spec, 70, "inverse_dynamics_loss")
    actions = moving_square_batch()["prev_action"][:, 1:].reshape(-1, 7)
    constant_prediction = 0.5 * np.sum(np.var(actions, axis=0))
    assert np.mean(losses[-5:]) < 0.5 * constant_prediction, (losses, constant_prediction)


@pytest.mark.parametrize("variant", ["hybrid", "state"])
def test_decode_state_is_the_decoders_state_head_alone(variant):
    spec, params = tiny_spec(variant), tiny_params(variant)
    feature = jax.random.normal(jax.random.key(1), (3, 5, spec.feature_dim))
    np.testing.assert_array_equal(wm.decode_state(params, spec, feature), wm.decode(params, spec, feature)["state"])
    with pytest.raises(ValueError, match="no state head"):
        wm.decode_state(tiny_params("vision"), tiny_spec("vision"), feature)
