"""ACT halting: arithmetic, frozen halted states, scan == while_loop, cached == uncached."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.latent import act as A
from latent_jax.testing import tiny_config
from latent_jax.models.decoder import Decoder

MC = tiny_config("llama", vocab_size=64, hidden_size=32, intermediate_size=64, head_dim=8,
                 num_attention_heads=4, num_key_value_heads=2)
AC = A.ACTConfig(k_max=3, tau=0.9, halting_bias_init=0.0, use_step_film=True, gated_residual=True)


@functools.partial(jax.jit, static_argnames=("mc", "ac", "loop"))
def _apply(params, ids, mask, *, mc, ac, loop):
    return A.act_apply(params, mc, ac, ids, attention_mask=mask, loop=loop)


def _params(ac=AC, mc=MC, seed=0, scale=2.0):
    p = A.init_params(mc, ac, seed)
    k = p["act"]["halting"]["kernel"]
    # a random, strong halting head so tokens halt after different numbers of steps
    p["act"]["halting"]["kernel"] = jax.random.normal(jax.random.PRNGKey(seed + 7), k.shape) * scale
    return p


def _batch(T=8):
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, T), 3, MC.vocab_size)
    mask = jnp.ones((2, T), jnp.int32).at[0, :2].set(0)  # row 0 left-padded
    return ids, mask


# ------------------------------------------------------------------ pure arithmetic
def test_halting_weights_sum_to_one_and_follow_act():
    p = jnp.array([[0.3, 0.05, 0.5], [0.4, 0.05, 0.6], [0.9, 0.05, 0.1], [0.2, 0.05, 0.2]])  # (K=4, 3 tokens)
    w, n, rem = A.halting_weights(p, tau=0.9)
    np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-6)
    # token 0: 0.3 + 0.4 = 0.7 < 0.9; + 0.9 >= 0.9 -> halts at step 3 with R = 0.3
    np.testing.assert_allclose(w[:, 0], [0.3, 0.4, 0.3, 0.0], atol=1e-6)
    # token 1 never reaches tau: runs k_max, last step takes the remainder
    np.testing.assert_allclose(w[:, 1], [0.05, 0.05, 0.05, 0.85], atol=1e-6)
    # token 2: 0.5 + 0.6 >= 0.9 -> two steps
    np.testing.assert_allclose(w[:, 2], [0.5, 0.5, 0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(n, [3, 4, 2])
    np.testing.assert_allclose(rem, [0.3, 0.85, 0.5], atol=1e-6)


def test_tau_zero_one_step_and_tau_above_one_runs_k_max():
    p = jax.random.uniform(jax.random.PRNGKey(0), (5, 7))
    w, n, _ = A.halting_weights(p, tau=0.0)
    np.testing.assert_array_equal(n, 1)
    np.testing.assert_allclose(w[0], 1.0)
    w, n, _ = A.halting_weights(p, tau=1.5)
    np.testing.assert_array_equal(n, 5)
    np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-6)
    assert float(w.min()) >= 0.0


def test_ponder_gradients_follow_the_formulation():
    p = jnp.array([[0.3], [0.4], [0.9], [0.2]])  # halts at step 3 (index 2)
    g = jax.grad(lambda p: A.ponder_act(*A.halting_weights(p, 0.9)[1:]).sum())(p)
    # N is constant; R = 1 - p0 - p1: dR/dp = -1 before the halting step, 0 from it on
    np.testing.assert_allclose(g[:, 0], [-1.0, -1.0, 0.0, 0.0], atol=1e-6)

    lam = 0.3
    kl = lambda p: A.ponder_pondernet(A.halting_weights(p, 0.9)[0], lam).sum()
    g = jax.grad(kl)(p)
    w = np.asarray(A.halting_weights(p, 0.9)[0][:, 0])
    lp = A.geometric_log_prior(4, lam)
    d = lambda k: np.log(w[k]) - lp[k] + 1.0
    # w0 = p0, w1 = p1, w2 = 1 - p0 - p1: dKL/dp_k = d_k - d_2 for k < 2, 0 otherwise
    np.testing.assert_allclose(g[:, 0], [d(0) - d(2), d(1) - d(2), 0.0, 0.0], rtol=1e-4, atol=1e-5)
    prior = np.exp(lp)
    np.testing.assert_allclose(prior.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(kl(p)), float(np.sum(w[:3] * (np.log(w[:3]) - lp[:3]))), rtol=1e-5)


# -------------------------------------------------------------------------- the model
def test_k_max_one_equals_plain_decoder():
    ac = A.ACTConfig(k_max=1)
    p = A.init_params(MC, ac, 0)
    ids, mask = _batch()
    out = _apply(p, ids, mask, mc=MC, ac=ac, loop="scan")
    ref = Decoder(MC).apply({"params": p["decoder"]}, ids, attention_mask=mask)
    v = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(out.logits)[v], np.asarray(ref.logits)[v], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(out.n_steps)[v], 1)


@functools.lru_cache(maxsize=None)
def _scan_while():
    p = _params()
    ids, mask = _batch()
    return p, ids, mask, _apply(p, ids, mask, mc=MC, ac=AC, loop="scan"), _apply(p, ids, mask, mc=MC, ac=AC, loop="while")


def test_scan_equals_while_and_weights_sum_to_one():
    p, ids, mask, s, w = _scan_while()
    v = np.asarray(mask, bool)
    n = np.asarray(s.n_steps)[v]
    assert len(np.unique(n)) > 1, "the test needs tokens that halt after different numbers of steps"
    np.testing.assert_allclose(np.asarray(s.logits), np.asarray(w.logits), atol=1e-5)
    np.testing.assert_array_equal(s.n_steps, w.n_steps)
    assert int(s.inner_steps) == int(w.inner_steps) == n.max()
    np.testing.assert_allclose(np.asarray(s.halt_mass)[v], 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(s.halt_mass)[~v], 0.0)


def test_while_loop_stops_early_when_every_token_halted():
    p = _params(scale=0.0)
    p["act"]["halting"]["bias"] = jnp.full_like(p["act"]["halting"]["bias"], 3.0)  # p ~ 0.95 >= tau
    ids, mask = _batch()
    out = _apply(p, ids, mask, mc=MC, ac=AC, loop="while")
    assert int(out.inner_steps) == 1
    ac_hi = dataclasses.replace(AC, tau=1.5)
    out = _apply(p, ids, mask, mc=MC, ac=ac_hi, loop="while")
    assert int(out.inner_steps) == AC.k_max
    np.testing.assert_array_equal(np.asarray(out.n_steps)[np.asarray(mask, bool)], AC.k_max)


def test_halted_positions_keep_their_state():
    p, ids, mask, full, _ = _scan_while()
    n = np.asarray(full.n_steps)
    v = np.asarray(mask, bool)
    for j in range(1, AC.k_max):
        sel = v & (n == j)
        if not sel.any():
            continue
        # a k_max = j run follows the same trajectory for j steps; tokens that halted at
        # step j must not change in the remaining steps of the full run
        pj = dict(p, act={k: (v[:j] if k in ("step_embed", "film_code", "gate") else v) for k, v in p["act"].items()})
        short = _apply(pj, ids, mask, mc=MC, ac=dataclasses.replace(AC, k_max=j), loop="scan")
        np.testing.assert_allclose(np.asarray(full.hidden)[sel], np.asarray(short.hidden)[sel], atol=1e-5)


def test_loss_has_ponder_gradient_on_halting_head():
    ac = dataclasses.replace(AC, lambda_ponder=1.0, lambda_deep_supervision=0.1)
    p = _params(ac)
    ids, mask = _batch()

    def ponder(p):
        out = A.act_apply(p, MC, ac, ids, attention_mask=mask, labels=ids)
        loss, m = A.act_loss(out, ids, mask, ac)
        return m["ponder"], m

    g, m = jax.grad(ponder, has_aux=True)(p)
    assert float(jnp.abs(g["act"]["halting"]["kernel"]).sum()) > 0
    assert np.isfinite(float(m["deep_supervision"])) and float(m["deep_supervision"]) > 0
    assert 1.0 <= float(m["act_expected_steps"]) <= ac.k_max


def test_chunked_lm_head_loss_equals_the_mixed_logits():
    """model ce_chunk > 0 (issue 24): the mix of the steps' final-normed states carried instead of
    the mixed logits, the head applied in chunks inside the loss and the deep supervision: the
    same loss, metrics and gradients as the mixed (B, T, V) logits."""
    ac = dataclasses.replace(AC, lambda_ponder=0.5, lambda_deep_supervision=0.3)
    p = _params(ac)
    ids, mask = _batch()

    def loss(p, mc):
        out = A.act_apply(p, mc, ac, ids, attention_mask=mask, labels=ids)
        return A.act_loss(out, ids, mask, ac, params=p, model_config=mc)

    @jax.jit
    def both(p):
        g = jax.value_and_grad(loss, has_aux=True)
        return g(p, MC), g(p, MC.replace(ce_chunk=3))

    ((l0, m0), g0), ((l3, m3), g3) = both(p)
    np.testing.assert_allclose(float(l3), float(l0), rtol=1e-5)
    for k in ("ce", "deep_supervision", "token_accuracy", "ponder"):
        np.testing.assert_allclose(float(m3[k]), float(m0[k]), rtol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(g3), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="params"):
        A.act_loss(A.act_apply(p, MC.replace(ce_chunk=3), ac, ids, attention_mask=mask), ids, mask, ac)


def test_chunked_cache_equals_full_sequence():
    p, ids, mask, _, full = _scan_while()
    cache = A.ACTCache.init(MC, AC.k_max, 2, 8)
    a = A.act_apply(p, MC, AC, ids[:, :5], attention_mask=mask[:, :5], cache=cache, loop="while")
    b = A.act_apply(p, MC, AC, ids[:, 5:], attention_mask=mask[:, 5:], cache=a.cache, loop="while")
    v = np.asarray(mask, bool)
    lg = np.concatenate([np.asarray(a.logits), np.asarray(b.logits)], 1)
    np.testing.assert_allclose(lg[v], np.asarray(full.logits)[v], atol=1e-4)
    np.testing.assert_array_equal(np.concatenate([a.n_steps, b.n_steps], 1)[v], np.asarray(full.n_steps)[v])
    assert int(b.cache.end) == 8


def test_cached_generation_equals_uncached():
    from latent_jax.decoding.sampling import SamplingParams

    p = _params()
    ids, mask = _batch(6)
    n_new = 5
    out = A.act_generate(p, ids, mask, jax.random.PRNGKey(0), SamplingParams.make(0.0), jnp.zeros((0,), jnp.int32),
                         model_config=MC, act_config=AC, max_new_tokens=n_new)
    # reference: recompute the whole sequence for every new token, no cache (one static
    # shape: the not-yet-generated tail is masked out, and causal attention ignores it)
    T = ids.shape[1]
    seq = np.concatenate([np.asarray(ids), np.zeros((2, n_new), np.int32)], 1)
    m = np.concatenate([np.asarray(mask), np.zeros((2, n_new), np.int32)], 1)
    for i in range(n_new):
        o = _apply(p, jnp.asarray(seq), jnp.asarray(m), mc=MC, ac=AC, loop="while")
        seq[:, T + i] = np.asarray(jnp.argmax(o.logits[:, T + i - 1], -1))
        m[:, T + i] = 1
    np.testing.assert_array_equal(np.asarray(out.tokens), seq[:, T:])
    assert 1 <= int(out.inner_steps.max()) <= AC.k_max


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="valid"):
        A.ACTConfig.from_dict({"k_max": 2, "bogus": 1})
    with pytest.raises(ValueError, match="ponder_type"):
        A.ACTConfig(ponder_type="x")
