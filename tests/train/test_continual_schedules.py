"""Per-group freeze / wake schedules (train/schedules.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from latent_jax.train import schedules as S


def test_gates_and_staged_updates():
    params = {"vision": {"w": jnp.ones(3)}, "projector": {"w": jnp.ones(3)}, "lm": {"w": jnp.ones(3)}}
    groups = S.parse_groups("projector=projector@0+0.2;vision=vision@0.4+0.2-0.8")
    assert groups[1] == S.GroupSchedule("vision", "vision", 0.4, 0.2, 0.8)
    lead = S.wake_ahead(groups[0], "late", "lm", 0.3)
    assert (lead.wake, lead.ramp) == (0.3, 0.2)
    total = 10
    g = S.gate(groups[1], total)
    np.testing.assert_allclose([float(g(t)) for t in range(total)], [0, 0, 0, 0, 0.5, 1, 1, 1, 0.5, 0])
    tx = S.staged(params, groups, lambda: optax.sgd(1.0), total)
    st = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    step = jax.jit(tx.update)
    seen = []
    for t in range(total):
        u, st = step(grads, st)
        seen.append({k: float(-u[k]["w"][0]) for k in params})
    np.testing.assert_allclose([s["vision"] for s in seen], [0, 0, 0, 0, 0.5, 1, 1, 1, 0.5, 0])
    np.testing.assert_allclose([s["projector"] for s in seen], [0.5] + [1] * 9)
    assert all(s["lm"] == 1.0 for s in seen)  # 'rest': always awake


def test_bad_specs_name_the_fix():
    with pytest.raises(ValueError, match="name=regex@wake"):
        S.parse_groups("vision")
    with pytest.raises(ValueError, match="sleep"):
        S.GroupSchedule("v", "v", wake=0.5, ramp=0.2, sleep=0.6)
    with pytest.raises(ValueError, match="match no parameter"):
        S.staged({"a": jnp.ones(2)}, S.parse_groups("v=vision@0"), lambda: optax.sgd(1.0), 10)
