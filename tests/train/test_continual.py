"""Continual backprop against a NumPy reference written from the paper's pseudo-code
(Dohare et al. 2024, Algorithm 1 with the reference code's accumulated replacement count)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from latent_jax.train import continual as C

SIZES = (5, 8, 6, 3)  # input, two hidden layers, output
NAMES = ("d0", "d1", "d2")


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        hs = {}
        for i, n in enumerate(SIZES[1:]):
            x = nn.Dense(n, name=NAMES[i])(x)
            if i < len(SIZES) - 2:
                x = nn.relu(x)
                hs[NAMES[i]] = x
        return x, hs


apply = jax.jit(lambda p, x: Net().apply({"params": p}, x))


@pytest.fixture(scope="module")
def net():
    params = jax.jit(lambda k: Net().init(k, jnp.zeros((1, SIZES[0]))))(jax.random.PRNGKey(0))["params"]
    params = jax.tree.map(np.asarray, params)
    return params, C.dense_chain(params, NAMES)


def ref_step(st, h, w_out, cfg, apply):
    """The paper's per-layer update in NumPy: age, utility, mean activation, accumulated count,
    lowest-utility eligible units (returns the mask)."""
    d = cfg.decay_rate
    st["age"] = st["age"] + 1
    st["util"] = d * st["util"] + (1 - d) * np.abs(h).mean(0) * np.abs(w_out).sum(1)
    st["mean"] = d * st["mean"] + (1 - d) * h.mean(0)
    bc = st["util"] / (1 - d ** st["age"])
    eligible = np.flatnonzero(st["age"] > cfg.maturity_threshold)
    st["accum"] += cfg.replacement_rate * len(eligible)
    mask = np.zeros(len(bc), bool)
    if apply:
        k = int(np.floor(st["accum"]))
        st["accum"] -= k
        chosen = eligible[np.argsort(bc[eligible], kind="stable")[:k]]
        mask[chosen] = True
    for key in ("util", "mean"):
        st[key] = np.where(mask, 0.0, st[key])
    st["age"] = np.where(mask, 0, st["age"])
    return mask


def test_matches_numpy_reference(net):
    params, layers = net
    cfg = C.CBPConfig(replacement_rate=0.3, maturity_threshold=2, decay_rate=0.9, apply_freq=2, init="kaiming")
    lr = 0.05
    tx = C.continual_backprop(optax.sgd(lr), layers, cfg)
    state = tx.init(params)
    step = jax.jit(lambda g, s, p, a: tx.update(g, s, p, activations=a))
    ref = [dict(age=np.zeros(l.units), util=np.zeros(l.units), mean=np.zeros(l.units), accum=0.0) for l in layers]
    rng = np.random.default_rng(0)
    p_np = jax.tree.map(np.asarray, params)
    total = 0
    for t in range(1, 9):
        grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), p_np)
        acts = {l.name: rng.normal(size=(4, l.units)).astype(np.float32) for l in layers}
        upd, state = step(grads, state, jax.tree.map(jnp.asarray, p_np), acts)
        new = jax.tree.map(lambda p, u: np.asarray(p + u), p_np, upd)
        # reference: SGD, then track and replace
        want = jax.tree.map(lambda p, g: p - lr * g, p_np, grads)
        for i, l in enumerate(layers):
            a, b = NAMES[i], NAMES[i + 1]
            mask = ref_step(ref[i], acts[l.name], want[b]["kernel"], cfg, apply=t % cfg.apply_freq == 0)
            total += mask.sum()
            np.testing.assert_allclose(np.asarray(state.util[i]), ref[i]["util"], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(np.asarray(state.mean_act[i]), ref[i]["mean"], rtol=1e-5, atol=1e-7)
            np.testing.assert_array_equal(np.asarray(state.age[i]), ref[i]["age"])
            np.testing.assert_allclose(float(state.accum[i]), ref[i]["accum"], atol=1e-6)
            # replaced units: incoming re-drawn within the init bound, bias 0, outgoing 0
            bound = cfg.gain * np.sqrt(3.0 / l.fan_in)
            fresh = new[a]["kernel"][:, mask]
            assert np.all(np.abs(fresh) <= bound + 1e-6)
            assert not np.allclose(fresh, want[a]["kernel"][:, mask]) or not mask.any()
            want[a]["kernel"][:, mask] = fresh
            want[a]["bias"][mask] = 0.0
            want[b]["kernel"][mask, :] = 0.0
        for path, x in C.flatten_paths(new).items():
            np.testing.assert_allclose(x, C.flatten_paths(want)[path], rtol=1e-5, atol=1e-6, err_msg=path)
        p_np = new
    assert total > 0 and int(state.replaced) == total
    assert step._cache_size() == 1  # one compile for steps with and without replacements


def test_adam_moments_reset_and_output_unchanged(net):
    params, layers = net
    x = np.random.default_rng(1).normal(size=(16, SIZES[0])).astype(np.float32)
    # units 0-2 of the first hidden layer are dead (never active): utility 0, replaced first
    params = jax.tree.map(np.array, params)
    params["d0"]["bias"][:3] = -100.0
    cfg = C.CBPConfig(replacement_rate=3 / 8, maturity_threshold=0, decay_rate=0.9)
    tx = C.continual_backprop(optax.adam(1e-2), layers[:1], cfg)
    state = tx.init(params)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(apply(p, x)[0] ** 2)))(params)
    _, hs = apply(params, x)
    upd, state = jax.jit(lambda g, s, p, a: tx.update(g, s, p, activations=a))(grads, state, params, hs)
    mask = np.zeros(8, bool)
    mask[:3] = True
    inner = state.inner
    mu, nu = inner[0].mu, inner[0].nu
    _, plain = jax.jit(optax.adam(1e-2).update)(grads, optax.adam(1e-2).init(params), params)
    for m, pm in ((mu, plain[0].mu), (nu, plain[0].nu)):
        assert np.all(np.asarray(m["d0"]["kernel"])[:, mask] == 0) and np.all(np.asarray(m["d1"]["kernel"])[mask] == 0)
        np.testing.assert_allclose(np.asarray(m["d0"]["kernel"])[:, ~mask], np.asarray(pm["d0"]["kernel"])[:, ~mask])
        np.testing.assert_allclose(np.asarray(m["d2"]["kernel"]), np.asarray(pm["d2"]["kernel"]))
    assert int(state.replaced) == 3
    # without the optimizer's own step, the output right after the replacement is unchanged
    tx0 = C.continual_backprop(optax.set_to_zero(), layers[:1], cfg)
    upd0, _ = jax.jit(lambda g, s, p, a: tx0.update(g, s, p, activations=a))(grads, tx0.init(params), params, hs)
    after = jax.tree.map(lambda p, u: p + np.asarray(u), params, upd0)
    assert not np.allclose(after["d0"]["kernel"][:, :3], params["d0"]["kernel"][:, :3])
    np.testing.assert_allclose(apply(after, x)[0], apply(params, x)[0], atol=1e-6)


def test_decoder_mlps_and_config_errors():
    from latent_jax.testing import tiny_config
    from latent_jax.models.decoder import Decoder

    cfg = tiny_config("phi3", num_hidden_layers=1, intermediate_size=32)  # fused gate_up
    m = Decoder(cfg)
    ids = jnp.ones((2, 4), jnp.int32)
    params = jax.jit(lambda k: m.init(k, ids))(jax.random.PRNGKey(0))["params"]
    layers = C.find_mlp_layers(params)
    assert [l.name for l in layers] == ["layers_0/mlp"] and layers[0].incoming[0][1] == 2
    _, inter = jax.jit(lambda p: m.apply({"params": p}, ids, mutable=["intermediates"]))(params)
    acts = C.activations_from_intermediates(inter["intermediates"])
    assert acts["layers_0/mlp"].shape == (2, 4, 32)
    tx = C.continual_backprop(optax.sgd(0.0), layers, C.CBPConfig(replacement_rate=0.25, maturity_threshold=0,
                                                                  init="normal"))
    upd, st = jax.jit(lambda s, p, a: tx.update(jax.tree.map(jnp.zeros_like, p), s, p, activations=a))(
        tx.init(params), params, acts)
    new = optax.apply_updates(params, upd)
    mask = np.asarray(st.age[0]) == 0
    assert mask.sum() == 8
    gu = np.asarray(new["layers_0"]["mlp"]["gate_up_proj"]["kernel"])
    old = np.asarray(params["layers_0"]["mlp"]["gate_up_proj"]["kernel"])
    both = np.concatenate([mask, mask])
    assert np.all(gu[:, both] != old[:, both]) and np.array_equal(gu[:, ~both], old[:, ~both])
    assert np.all(np.asarray(new["layers_0"]["mlp"]["down_proj"]["kernel"])[mask] == 0)
    with pytest.raises(ValueError, match="activations"):
        tx.update(params, st, params)
    with pytest.raises(ValueError, match="replacement_rate"):
        C.CBPConfig(replacement_rate=2.0)
    with pytest.raises(ValueError, match="no hidden layers"):
        C.continual_backprop(optax.sgd(0.1), C.find_mlp_layers(params, "vision"))


def test_shrink_and_perturb_and_l2():
    p = {"w": jnp.ones((3,))}
    tx = C.wrap_optimizer(optax.sgd(0.0), p, {"snp_shrink": 0.5, "snp_noise": 0.0})
    u, _ = tx.update({"w": jnp.zeros(3)}, tx.init(p), p)
    np.testing.assert_allclose(p["w"] + u["w"], 0.5)
    tx = C.wrap_optimizer(optax.sgd(1.0), p, {"l2": 0.1})
    u, _ = tx.update({"w": jnp.zeros(3)}, tx.init(p), p)
    np.testing.assert_allclose(u["w"], -0.1)


def test_shrink_and_perturb_acts_once_per_update_under_grad_accum():
    """With optax.MultiSteps (optim.grad_accum 3) shrink-and-perturb acts on the update MultiSteps
    emits, not on the accumulating micro-steps: after 6 micro-steps the weights shrank twice, and
    the noise stream matches grad_accum 1 after 2 updates."""
    p0 = {"w": jnp.ones((4,)), "b": jnp.full((2,), 2.0)}
    cfg = {"snp_shrink": 0.5, "snp_noise": 0.01, "seed": 3}

    def run(accum, steps):
        inner = optax.sgd(0.0) if accum == 1 else optax.MultiSteps(optax.sgd(0.0), every_k_schedule=accum)
        tx = C.wrap_optimizer(inner, p0, cfg)
        p, s = p0, tx.init(p0)
        for _ in range(steps):
            u, s = tx.update(jax.tree.map(jnp.zeros_like, p), s, p)
            p = optax.apply_updates(p, u)
        return p

    one, acc = run(1, 2), run(3, 6)
    for k in p0:
        np.testing.assert_allclose(acc[k], one[k], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.mean(acc["b"]), 0.5, atol=0.05)  # 2 x 0.5 x 0.5, not 2 x 0.5**6


def _train(params, layers, cfg, accum, updates=24, batch=16, seed=0):
    """`updates` Adam updates of a regression on fixed data, each over a batch of `batch` rows
    split into `accum` micro-batches (optax.MultiSteps as optim.grad_accum); returns the final
    params and state, the params after each micro-step, and the replaced count after each update."""
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(updates, batch, SIZES[0])).astype(np.float32)
    ys = rng.normal(size=(updates, batch, SIZES[-1])).astype(np.float32)
    inner = optax.adam(3e-2) if accum == 1 else optax.MultiSteps(optax.adam(3e-2), every_k_schedule=accum)
    tx = C.continual_backprop(inner, layers, cfg)
    state = tx.init(params)

    @jax.jit
    def step(p, s, x, y):
        def loss(p):
            out, hs = Net().apply({"params": p}, x)
            return jnp.mean((out - y) ** 2), hs
        (_, hs), g = jax.value_and_grad(loss, has_aux=True)(p)
        u, s = tx.update(g, s, p, activations=hs)
        return optax.apply_updates(p, u), s

    micro_params, replaced = [], []
    m = batch // accum
    for t in range(updates):
        for j in range(accum):
            params, state = step(params, state, xs[t, j * m:(j + 1) * m], ys[t, j * m:(j + 1) * m])
            micro_params.append(params)
        replaced.append(int(state.replaced))
    return params, state, micro_params, replaced


@pytest.mark.parametrize("accumulate", [True, False])
def test_grad_accum_counts_optimizer_updates(net, accumulate):
    """grad_accum 4 (MultiSteps around Adam, micro-batches of 4) tracks and replaces exactly as
    grad_accum 1 on the same batches of 16: age, maturity and the replacement rate count updates;
    no unit is replaced halfway through an accumulated update."""
    params, layers = net
    cfg = C.CBPConfig(replacement_rate=0.05, maturity_threshold=4, decay_rate=0.9, init="kaiming",
                      accumulate=accumulate)
    p1, s1, _, r1 = _train(params, layers, cfg, accum=1)
    p4, s4, micro, r4 = _train(params, layers, cfg, accum=4)
    assert r1[-1] > 0 and r4 == r1  # the same replacements at the same updates
    assert int(s4.count) == int(s1.count) == 24
    for i in range(len(layers)):
        np.testing.assert_array_equal(np.asarray(s4.age[i]), np.asarray(s1.age[i]))
        assert int(np.max(np.asarray(s4.age[i]))) <= 24
        np.testing.assert_allclose(np.asarray(s4.util[i]), np.asarray(s1.util[i]), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(s4.mean_act[i]), np.asarray(s1.mean_act[i]), rtol=1e-4, atol=1e-6)
    for path, x in C.flatten_paths(p4).items():
        np.testing.assert_allclose(np.asarray(x), np.asarray(C.flatten_paths(p1)[path]), rtol=1e-4, atol=1e-5,
                                   err_msg=path)
    # the micro-steps inside an update change nothing (no replacement, no partial update)
    for t in range(24):
        before = params if t == 0 else micro[4 * t - 1]
        for j in range(3):  # micro-steps 1-3 of update t: params stay as before the update
            for x, y in zip(jax.tree.leaves(micro[4 * t + j]), jax.tree.leaves(before)):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_probabilistic_replacement_as_gnt_default(net):
    """accumulate=False (gnt.py's default): with rate x eligible < 1, at most one unit per layer
    per update, replaced with probability rate x eligible; with accumulation the count is the
    accumulated floor, deterministic."""
    params, layers = net
    rate, T = 0.05, 300
    counts = {}
    for acc in (True, False):
        cfg = C.CBPConfig(replacement_rate=rate, maturity_threshold=0, decay_rate=0.9, accumulate=acc, seed=3)
        tx = C.continual_backprop(optax.set_to_zero(), layers, cfg)
        step = jax.jit(lambda g, s, p, a: tx.update(g, s, p, activations=a))
        state, rng, per_update = tx.init(params), np.random.default_rng(0), []
        zeros = jax.tree.map(np.zeros_like, params)
        for _ in range(T):
            acts = {l.name: np.abs(rng.normal(size=(4, l.units))).astype(np.float32) for l in layers}
            before = int(state.replaced)
            _, state = step(zeros, state, params, acts)
            per_update.append(int(state.replaced) - before)
        counts[acc] = per_update
    # eligible from the first update (maturity 0): 8 + 6 units, rate x eligible = 0.4 and 0.3
    assert sum(counts[True]) == int(np.floor(T * rate * 8 + 1e-6)) + int(np.floor(T * rate * 6 + 1e-6))
    assert max(counts[False]) <= 2  # one unit per layer at most
    expected = T * rate * (8 + 6)  # 210; sd ~ sqrt(300 * (0.4 * 0.6 + 0.3 * 0.7)) ~ 11.6
    assert abs(sum(counts[False]) - expected) < 50 and counts[False] != counts[True]
