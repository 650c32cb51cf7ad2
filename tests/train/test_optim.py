"""Optimizer factory: schedule shapes, clipping, gradient accumulation, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from latent_jax.train.optim import make_optimizer, make_schedule


def _cfg(**kw):
    c = ConfigDict(dict(name="adamw", learning_rate=1e-2, weight_decay=0.0, warmup_steps=0, grad_clip=0.0,
                        grad_accum=1, b1=0.9, b2=0.999, schedule="constant"))
    c.update(kw)
    return c


def test_warmup_then_cosine_schedule():
    s = make_schedule(_cfg(warmup_steps=10, schedule="cosine", end_lr_ratio=0.1), total_steps=110)
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(float(s(5)), 5e-3, rtol=1e-6)
    np.testing.assert_allclose(float(s(10)), 1e-2, rtol=1e-6)
    np.testing.assert_allclose(float(s(110)), 1e-3, rtol=1e-5)
    assert float(make_schedule(_cfg(), 100)(50)) == pytest.approx(1e-2)


def test_grad_accumulation_equals_big_batch():
    params = {"w": jnp.arange(4.0)}
    grads = [{"w": jnp.array([1.0, -2.0, 0.5, 3.0])}, {"w": jnp.array([0.0, 1.0, -1.5, 1.0])}]
    acc = make_optimizer(params, _cfg(grad_accum=2), 10)
    one = make_optimizer(params, _cfg(), 10)
    s = acc.init(params)
    p = params
    for g in grads:
        u, s = acc.update(g, s, p)
        p = optax.apply_updates(p, u)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
    u1, _ = one.update(mean, one.init(params), params)
    np.testing.assert_allclose(np.asarray(p["w"]), np.asarray(optax.apply_updates(params, u1)["w"]), rtol=1e-6)


def test_clipping_and_weight_decay():
    params = {"w": jnp.ones(3)}
    tx = make_optimizer(params, _cfg(grad_clip=1e-3, weight_decay=0.5, b1=0.0, b2=0.0), 10)
    u, _ = tx.update({"w": jnp.array([100.0, 0.0, 0.0])}, tx.init(params), params)
    # b1=b2=0: adam step is sign-like on the clipped gradient; decay applies to every weight
    np.testing.assert_allclose(np.asarray(u["w"])[1:], -1e-2 * 0.5, rtol=1e-5)


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="optim.name"):
        make_optimizer({"w": jnp.ones(2)}, _cfg(name="sgdx"), 10)
    with pytest.raises(ValueError, match="optim.schedule"):
        make_schedule(_cfg(schedule="exp"), 10)
