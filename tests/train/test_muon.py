"""Muon on hidden 2-D weights, AdamW on the rest, chosen by param path."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from latent_jax.latent import act as A
from latent_jax.testing import tiny_config
from latent_jax.models.decoder import Decoder, init_params as init_decoder
from latent_jax.train.muon import muon_adamw, muon_labels

OC = ConfigDict(dict(learning_rate=0.02, adamw_learning_rate=1e-3, weight_decay=0.0, b1=0.9, b2=0.99))


@pytest.mark.parametrize("scan", [False, True])
def test_labels(scan):
    mc = tiny_config("llama", scan_layers=scan)
    p = A.init_params(mc, A.ACTConfig(use_step_film=True), 0)
    lab = muon_labels(p)
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(lab)[0]}
    muon_keys = sorted(k for k, v in flat.items() if v == "muon")
    assert len(muon_keys) == 7 * (1 if scan else mc.num_hidden_layers)
    assert all(k.endswith("/kernel") and ("_proj" in k) for k in muon_keys)
    assert flat["decoder/embed_tokens/embedding"] == "adamw"
    assert flat["decoder/lm_head/kernel"] == "adamw"
    assert all(v == "adamw" for k, v in flat.items() if k.startswith("act/"))
    assert all(v == "adamw" for k, v in flat.items() if "layernorm" in k or k.endswith("norm/scale"))


def test_adamw_group_matches_plain_adamw_and_training_decreases_loss():
    mc = tiny_config("llama", vocab_size=32, hidden_size=32, intermediate_size=64, head_dim=8)
    p = A.init_params(mc, A.ACTConfig(k_max=1), 0)
    tx = muon_adamw(p, OC, optax.constant_schedule(0.02))
    g = jax.tree.map(lambda x: jnp.full_like(x, 0.5), p)
    u, _ = jax.jit(tx.update)(g, jax.jit(tx.init)(p), p)
    ref_tx = optax.adamw(1e-3, b1=0.9, b2=0.99, weight_decay=0.0)
    ru, _ = ref_tx.update(g, ref_tx.init(p), p)
    np.testing.assert_allclose(u["decoder"]["embed_tokens"]["embedding"], ru["decoder"]["embed_tokens"]["embedding"], rtol=1e-5)
    # Muon's update of a rank-1 gradient is not AdamW's sign-like step
    q = u["decoder"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
    assert not np.allclose(q, ru["decoder"]["layers_0"]["self_attn"]["q_proj"]["kernel"])

    ids = jax.random.randint(jax.random.PRNGKey(0), (4, 8), 0, 32)
    mc1 = mc.replace(num_hidden_layers=1, layer_windows=(0,))
    p = {"decoder": init_decoder(mc1, 0)}
    tx = muon_adamw(p, OC, None)

    def loss(p):
        logits = Decoder(mc1).apply({"params": p["decoder"]}, ids[:, :-1]).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

    @jax.jit
    def step(p, s):
        l, g = jax.value_and_grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, l

    s = tx.init(p)
    losses = []
    for _ in range(15):
        p, s, l = step(p, s)
        losses.append(float(l))
    assert losses[-1] < losses[0] - 0.5


def test_no_hidden_weights_is_an_error():
    with pytest.raises(ValueError, match="adamw"):
        muon_adamw({"w": jnp.ones((3, 3))}, OC, None)
