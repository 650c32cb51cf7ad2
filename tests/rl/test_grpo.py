"""The GRPO objective against NumPy references and its zero-gradient cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.rl import grpo


def test_group_advantages_hand_computed():
    adv = np.asarray(grpo.group_advantages(jnp.array([1.0, 0, 0, 0, 1, 1, 1, 1]), 4))
    # group 1: mean 0.25, std (ddof 1) 0.5; group 2: zero variance -> 0
    np.testing.assert_allclose(adv[:4], np.array([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-4), rtol=1e-6)
    np.testing.assert_array_equal(adv[4:], 0.0)
    np.testing.assert_allclose(np.asarray(grpo.group_advantages(jnp.array([1.0, 0, 0, 0]), 4, "none")),
                               [0.75, -0.25, -0.25, -0.25])
    np.testing.assert_array_equal(np.asarray(grpo.group_advantages(jnp.array([1.0, 0.0, 3.0]), 1)), 0.0)
    with pytest.raises(ValueError, match="groups of 4"):
        grpo.group_advantages(jnp.ones(6), 4)


@pytest.mark.parametrize("rewards,G", [([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], 3), ([1.0, 0.0, 1.0], 1)])
def test_no_policy_gradient_without_reward_variance(rewards, G):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(len(rewards), 5, 7)), jnp.float32)
    toks = jnp.asarray(rng.integers(0, 7, (len(rewards), 5)))
    mask = jnp.asarray(np.arange(5)[None] < np.array([5, 3, 4, 1, 5, 2][: len(rewards)])[:, None])
    adv = grpo.group_advantages(jnp.asarray(rewards), G)

    def loss(lg):
        lp = grpo.token_logprobs(lg, toks)
        return grpo.grpo_objective(lp, jax.lax.stop_gradient(lp), adv, mask)[0]

    g = jax.grad(loss)(logits)
    np.testing.assert_array_equal(np.asarray(g), 0.0)
    # with reward variance the same setup has a gradient
    adv2 = grpo.group_advantages(jnp.asarray([1.0, 0.0, 0.0, 1.0, 0.0, 1.0][: len(rewards)]), len(rewards))
    g2 = jax.grad(lambda lg: grpo.grpo_objective(grpo.token_logprobs(lg, toks), jax.lax.stop_gradient(
        grpo.token_logprobs(lg, toks)), adv2, mask)[0])(logits)
    assert float(jnp.abs(g2).max()) > 1e-4


def _numpy_reference(logp, old, ref, adv, mask, eps_lo, eps_hi, beta, aggregation):
    B, T = logp.shape
    per = np.zeros((B, T))
    for i in range(B):
        for t in range(T):
            r = np.exp(logp[i, t] - old[i, t])
            surr = min(r * adv[i], min(max(r, 1 - eps_lo), 1 + eps_hi) * adv[i])
            d = ref[i, t] - logp[i, t]
            per[i, t] = -surr + beta * (np.exp(d) - d - 1)
    if aggregation == "sequence":
        return np.mean([per[i, mask[i]].sum() / max(mask[i].sum(), 1) for i in range(B)])
    if aggregation == "token":
        return per[mask].sum() / mask.sum()
    return per[mask].sum() / (B * T)


@pytest.mark.parametrize("aggregation", ["sequence", "token", "fixed", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_clipped_objective_matches_numpy(aggregation, beta):
    rng = np.random.default_rng(1)
    B, T = 6, 5
    logp = np.log(rng.uniform(0.05, 1.0, (B, T)))
    old = logp + rng.normal(0, 0.4, (B, T))  # ratios well outside [0.8, 1.2] for some tokens
    ref = logp + rng.normal(0, 0.3, (B, T))
    adv = np.array([1.5, -0.7, 0.0, 2.0, -1.2, 0.3])
    mask = np.arange(T)[None] < np.array([5, 2, 4, 1, 3, 5])[:, None]
    loss, m = grpo.grpo_objective(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                                  jnp.asarray(ref), eps_low=0.2, eps_high=0.28, beta=beta, aggregation=aggregation)
    want = _numpy_reference(logp, old, ref, adv, mask, 0.2, 0.28, beta, grpo.check_aggregation(aggregation))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)
    r = np.exp(logp - old)
    clipped = ((r < 0.8) & (adv[:, None] < 0)) | ((r > 1.28) & (adv[:, None] > 0))
    assert float(m["clip_fraction"]) == pytest.approx(clipped[mask].mean(), abs=1e-6)
    assert 0 < float(m["clip_fraction"]) < 1


def test_k3_is_the_formula_and_estimates_kl():
    lp, rp = np.log(np.array([0.5, 0.2])), np.log(np.array([0.25, 0.4]))
    k3 = np.asarray(grpo.k3_kl(jnp.asarray(lp), jnp.asarray(rp)))
    d = rp - lp
    np.testing.assert_allclose(k3, np.exp(d) - d - 1, rtol=1e-6)
    assert (k3 >= 0).all() and float(grpo.k3_kl(jnp.float32(-1.0), jnp.float32(-1.0))) == 0.0
    # unbiased: its mean under samples of pi is KL(pi || ref)
    p, q = np.array([0.5, 0.3, 0.15, 0.05]), np.array([0.25, 0.25, 0.25, 0.25])
    x = np.random.default_rng(0).choice(4, size=200_000, p=p)
    est = float(np.mean(np.asarray(grpo.k3_kl(jnp.asarray(np.log(p)[x]), jnp.asarray(np.log(q)[x])))))
    assert est == pytest.approx(float(np.sum(p * np.log(p / q))), rel=0.02)
    # the objective reports it as the token mean
    _, m = grpo.grpo_objective(jnp.asarray(lp)[None], jnp.asarray(lp)[None], jnp.zeros(1), jnp.ones((1, 2), bool),
                               jnp.asarray(rp)[None], beta=0.1)
    assert float(m["kl"]) == pytest.approx(k3.mean(), rel=1e-6)


def test_aggregations_differ_by_length_weighting():
    per = jnp.array([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = jnp.array([[1, 1, 1, 1], [1, 0, 0, 0]], bool)
    assert float(grpo.aggregate(per, mask, "sequence")) == pytest.approx((1.0 + 4.0) / 2)
    assert float(grpo.aggregate(per, mask, "token")) == pytest.approx(8.0 / 5)
    assert float(grpo.aggregate(per, mask, "fixed")) == pytest.approx(8.0 / 8)
    with pytest.raises(ValueError, match="rl.aggregation"):
        grpo.check_aggregation("mean")
