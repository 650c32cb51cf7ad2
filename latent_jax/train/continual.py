"""Continual backprop, L2 and shrink-and-perturb as optax transformations (plasticity keepers).

Continual backprop (Dohare et al., "Loss of plasticity in deep continual learning", Nature
632, 2024; reference code github.com/shibhansh/loss-of-plasticity, lop/algos/gnt.py) keeps a
network plastic by re-initialising a tiny fraction of its least useful hidden units. Per
hidden unit i of a layer it keeps

    age_i      optimizer updates since the unit was (re)initialised
    u_i        running utility: u <- d u + (1 - d) |h_i| sum_k |w_out[i, k]|
               (|h_i| the unit's mean absolute activation over the batch and tokens, d the
               decay rate); ranked bias-corrected, u / (1 - d^age)
    f_i        running mean activation (same decay)

and per layer how many units to replace: with `accumulate` (the default) an accumulator gains
replacement_rate x (units older than maturity_threshold) every update and every `apply_freq`
updates floor(accumulator) units are replaced (the integer part taken off it); without it (the
reference gnt.py's own default, accumulate=False) every `apply_freq` updates n = rate x
eligible units are replaced, floor(n) when n >= 1 and, when n < 1, one unit with probability n.
The eligible units with the lowest utility are replaced: incoming weights re-drawn from the init
distribution, incoming biases zero, outgoing weights zero (the new unit does not change
the output at that update), age / utility / mean activation zero, and the optimizer's
per-parameter moments of those weights zero.

Under gradient accumulation (optax.MultiSteps inside `inner`, optim.grad_accum > 1) every
count above is of optimizer updates, not micro-batches: the micro-batches' activation
statistics are averaged until MultiSteps emits an update, and only then do age, utility, the
replacement count and replacements advance (so grad_accum k on micro-batches of B / k tracks
and replaces as grad_accum 1 on batches of B).

Hidden layers are Dense chains `x -> act(x @ W_in + b) -> @ W_out`: the decoder's gated MLP
(gate_proj / up_proj or fused gate_up_proj in, down_proj out; the unit's activation is
act(gate) * up, sown by `models.layers.MLP` as intermediates 'hidden') and plain MLPs built
with `dense_chain`. Stacked (scan_layers) parameters are handled per stacked layer.

    tx = continual_backprop(inner_tx, find_mlp_layers(params), CBPConfig(...))
    updates, opt_state = tx.update(grads, opt_state, params, activations=acts)

`acts` maps each layer's name to its hidden activation (..., units) from the same forward
(`activations_from_intermediates` turns flax's sown intermediates into that dict). The
whole update is one jitted function with static shapes: the replacement is mask-based, its
random draws run inside lax.cond only at updates that replace something, and every op is
elementwise or a reduction, so params and moments may be FSDP / tensor sharded.

Tasks expose activations to the Trainer by returning them in loss_fn's metrics under the
key `ACTIVATIONS`; `wrap_optimizer` builds the transformations from `config.continual`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

ACTIVATIONS = "continual_activations"  # loss_fn metrics key holding {layer name: (..., units)}
INITS = ("kaiming", "lecun", "default", "normal")


def _path(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def flatten_paths(tree: Any) -> dict[str, Any]:
    """{'a/b/c': leaf} of a pytree."""
    return {_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@dataclasses.dataclass(frozen=True)
class HiddenLayer:
    """One layer of hidden units. `incoming`: (path, repeat) of the Dense kernels (unit axis
    last; re-drawn) and biases (zeroed) that feed the units (`repeat` 2 for a fused gate_up
    kernel whose columns are [gate | up]); `outgoing`: paths of the kernels the units feed
    (unit axis second to last; zeroed). `lead`: leading stacked axes (scan_layers) of the
    per-unit state."""

    name: str
    units: int
    fan_in: int
    incoming: tuple[tuple[str, int], ...]
    outgoing: tuple[str, ...]
    lead: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class CBPConfig:
    """Continual-backprop hyper-parameters (names as config.continual; the paper's defaults
    for permuted MNIST: replacement_rate 1e-4, maturity_threshold 100, decay_rate 0.99)."""

    replacement_rate: float = 1e-4
    maturity_threshold: int = 100
    decay_rate: float = 0.99
    apply_freq: int = 1
    init: str = "kaiming"  # kaiming | lecun | default (uniform, as the reference) | normal
    init_std: float = 0.02  # init='normal': the decoder's N(0, initializer_range)
    gain: float = math.sqrt(2.0)  # init='kaiming': the activation's gain (ReLU: sqrt 2)
    seed: int = 0
    accumulate: bool = True  # False: gnt.py's default (one unit with probability rate x eligible when < 1)

    def __post_init__(self):
        if not 0.0 <= self.replacement_rate <= 1.0:
            raise ValueError(f"continual.replacement_rate={self.replacement_rate}; use a fraction in [0, 1]")
        if not 0.0 <= self.decay_rate < 1.0:
            raise ValueError(f"continual.decay_rate={self.decay_rate}; use a value in [0, 1)")
        if self.maturity_threshold < 0:
            raise ValueError(f"continual.maturity_threshold={self.maturity_threshold}; use >= 0 updates")
        if self.apply_freq < 1:
            raise ValueError(f"continual.apply_freq={self.apply_freq}; use >= 1 (updates between replacements)")
        if self.init not in INITS:
            raise ValueError(f"continual.init={self.init!r}; use one of {', '.join(INITS)}")


class CBPState(NamedTuple):
    inner: Any
    util: tuple  # per layer, lead + (units,) float32
    mean_act: tuple
    age: tuple  # int32
    accum: tuple  # lead, float32
    count: jax.Array  # () int32 updates so far
    rng: jax.Array  # (2,) uint32
    replaced: jax.Array  # () int32 units replaced so far (all layers)
    act_abs: tuple = ()  # per layer, lead + (units,): sum of mean |h| over this update's micro-batches
    act_mean: tuple = ()  # per layer: sum of mean h over this update's micro-batches
    micro: Any = 0  # () int32 micro-batches summed into act_abs / act_mean


# ------------------------------------------------------------------ finding hidden layers
def find_mlp_layers(params: Any, pattern: str = "") -> list[HiddenLayer]:
    """The decoder-style MLPs in `params`: every module with down_proj/kernel and gate_proj +
    up_proj or gate_up_proj kernels (biases included when present). `pattern`: a regex the
    module path must contain (e.g. 'layers_[01]/' or 'vision'); '' = all."""
    flat = flatten_paths(params)
    out = []
    for p in sorted(flat):
        if not p.endswith("/down_proj/kernel"):
            continue
        mod = p[: -len("/down_proj/kernel")]
        if pattern and not re.search(pattern, mod + "/"):
            continue
        down = flat[p]
        units, lead = int(down.shape[-2]), tuple(int(s) for s in down.shape[:-2])
        incoming = []
        for name, rep in (("gate_proj", 1), ("up_proj", 1), ("gate_up_proj", 2)):
            for leaf in ("kernel", "bias"):
                q = f"{mod}/{name}/{leaf}"
                if q in flat:
                    incoming.append((q, rep))
        kernels = [q for q, _ in incoming if q.endswith("kernel")]
        if not kernels:
            continue
        fan_in = int(flat[kernels[0]].shape[-2])
        out.append(HiddenLayer(mod, units, fan_in, tuple(incoming), (p,), lead))
    return out


def dense_chain(params: Any, names: Sequence[str], prefix: str = "") -> list[HiddenLayer]:
    """Hidden layers of a plain MLP whose Dense modules are `names` in order (input to
    output): layer i's units are names[i]'s outputs, fed to names[i + 1]. Layer names (the
    activation keys) are prefix + names[i]."""
    flat = flatten_paths(params)
    out = []
    for a, b in zip(names[:-1], names[1:]):
        ka, kb = f"{prefix}{a}/kernel", f"{prefix}{b}/kernel"
        for k in (ka, kb):
            if k not in flat:
                raise ValueError(f"no Dense kernel {k!r} in params; valid kernels: "
                                 f"{', '.join(q for q in flat if q.endswith('kernel'))}")
        incoming = [(ka, 1)] + ([(f"{prefix}{a}/bias", 1)] if f"{prefix}{a}/bias" in flat else [])
        w = flat[ka]
        out.append(HiddenLayer(prefix + a, int(w.shape[-1]), int(w.shape[-2]), tuple(incoming), (kb,),
                               tuple(int(s) for s in w.shape[:-2])))
    return out


def activations_from_intermediates(intermediates: Mapping, name: str = "hidden") -> dict[str, jax.Array]:
    """{module path: activation} from flax's sown 'intermediates' collection (each module's
    `name` entry; a tuple of one array per call, the calls concatenated over the batch)."""
    out = {}
    for p, x in flatten_paths(intermediates).items():
        parts = p.split("/")
        # sow stores a tuple: '<module path>/<name>/<call index>'
        if len(parts) >= 2 and parts[-2] == name:
            mod = "/".join(parts[:-2])
            out.setdefault(mod, []).append(x)
    return {k: v[0] if len(v) == 1 else jnp.concatenate(v, axis=-2 if v[0].ndim > 1 else 0) for k, v in out.items()}


# ------------------------------------------------------------------ the pieces
def _bound(layer: HiddenLayer, cfg: CBPConfig) -> float:
    if cfg.init == "kaiming":
        return cfg.gain * math.sqrt(3.0 / layer.fan_in)
    if cfg.init == "lecun":
        return math.sqrt(3.0 / layer.fan_in)
    return math.sqrt(1.0 / layer.fan_in)


def init_draw(key: jax.Array, shape: tuple, dtype, layer: HiddenLayer, cfg: CBPConfig) -> jax.Array:
    """Fresh incoming weights of `shape` from the init distribution."""
    if cfg.init == "normal":
        return (cfg.init_std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
    b = _bound(layer, cfg)
    return jax.random.uniform(key, shape, jnp.float32, -b, b).astype(dtype)


def _unit_stats(h: jax.Array, layer: HiddenLayer) -> tuple[jax.Array, jax.Array]:
    """(mean |h|, mean h) per unit: reduced over every axis but the lead axes and the last."""
    h = jnp.asarray(h, jnp.float32)
    nl = len(layer.lead)
    if h.shape[:nl] != layer.lead or h.shape[-1] != layer.units:
        raise ValueError(f"activation of {layer.name} has shape {h.shape}; expected {layer.lead} + (..., "
                         f"{layer.units}) (stacked axes, then batch/tokens, then units)")
    axes = tuple(range(nl, h.ndim - 1))
    return jnp.mean(jnp.abs(h), axis=axes), jnp.mean(h, axis=axes)


def _out_magnitude(flat: dict, layer: HiddenLayer) -> jax.Array:
    """sum_k |w_out[i, k]| per unit (all outgoing kernels)."""
    return sum(jnp.sum(jnp.abs(flat[p].astype(jnp.float32)), axis=-1) for p in layer.outgoing)


def track(util, mean_act, age, h, flat_params, layer: HiddenLayer, decay: float, stats=None):
    """One update of a layer's (utility, mean activation, age) from its activation `h` (or its
    per-unit `stats` (mean |h|, mean h), e.g. averaged over micro-batches) and the (post-update)
    params."""
    absmean, mean = _unit_stats(h, layer) if stats is None else stats
    age = age + 1
    util = decay * util + (1.0 - decay) * absmean * _out_magnitude(flat_params, layer)
    mean_act = decay * mean_act + (1.0 - decay) * mean
    return util, mean_act, age


def bias_corrected(util: jax.Array, age: jax.Array, decay: float) -> jax.Array:
    """util / (1 - decay^age) (Adam-style; age >= 1 after an update)."""
    return util / jnp.maximum(1.0 - jnp.power(decay, age.astype(jnp.float32)), 1e-12)


def replacement_count(age: jax.Array, accum: jax.Array, rate: float, maturity: int,
                      apply: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(units to replace now, new accumulator): the accumulator gains rate x eligible units
    (age > maturity) every update; when `apply`, its integer part is taken off it."""
    accum = accum + rate * jnp.sum(age > maturity, axis=-1).astype(jnp.float32)
    k = jnp.where(apply, jnp.floor(accum), 0.0)
    return k, accum - k


def sampled_replacement_count(age: jax.Array, rate: float, maturity: int, apply: jax.Array,
                              key: jax.Array) -> jax.Array:
    """Units to replace now without accumulation (gnt.py's accumulate=False): n = rate x
    eligible; floor(n) when n >= 1, else 1 with probability n (none when nothing is eligible)."""
    eligible = jnp.sum(age > maturity, axis=-1).astype(jnp.float32)
    n = rate * eligible
    u = jax.random.uniform(key, n.shape, jnp.float32)
    k = jnp.where(n < 1.0, ((u <= n) & (eligible > 0)).astype(jnp.float32), jnp.floor(n))
    return jnp.where(apply, k, 0.0)


def real_update(old_inner: Any, new_inner: Any) -> jax.Array:
    """True when `inner`'s update was a real optimizer update: always, unless it holds
    optax.MultiSteps (gradient accumulation), whose gradient_step advances only when it emits."""
    is_ms = lambda x: isinstance(x, optax.MultiStepsState)
    old = [x for x in jax.tree_util.tree_leaves(old_inner, is_leaf=is_ms) if is_ms(x)]
    new = [x for x in jax.tree_util.tree_leaves(new_inner, is_leaf=is_ms) if is_ms(x)]
    if not new:
        return jnp.asarray(True)
    return jnp.asarray(new[0].gradient_step) != jnp.asarray(old[0].gradient_step)


def lowest_utility(util_bc: jax.Array, age: jax.Array, k: jax.Array, maturity: int) -> jax.Array:
    """Mask of the k eligible units (age > maturity) with the lowest utility (ties: lower
    index first), per stacked layer."""
    eligible = age > maturity
    key = jnp.where(eligible, util_bc, jnp.inf)
    order = jnp.argsort(key, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1, stable=True)  # rank of each unit by utility
    return eligible & (rank < k[..., None].astype(jnp.int32))


def _expand(mask: jax.Array, leaf: jax.Array, lead: int, axis: int, repeat: int) -> jax.Array:
    """A unit mask (lead..., units) broadcast against `leaf` whose unit axis is `axis` (-1 / -2)."""
    m = jnp.concatenate([mask] * repeat, axis=-1) if repeat > 1 else mask
    if axis == -2:
        m = m[..., None]
    for _ in range(leaf.ndim - m.ndim):  # axes between the lead axes and the unit axis
        m = jnp.expand_dims(m, lead)
    return m


def _moment_paths(inner_state: Any, flat_params: dict) -> dict[str, str]:
    """{opt-state leaf path: param path} for leaves that are per-parameter moments (path ends
    with the param's path and the shapes agree)."""
    out = {}
    by_length = sorted(flat_params.items(), key=lambda kv: -len(kv[0]))  # the most specific path first
    for p, x in flatten_paths(inner_state).items():
        for q, w in by_length:
            if (p == q or p.endswith("/" + q)) and np.shape(x) == np.shape(w):
                out[p] = q
                break
    return out


def continual_backprop(inner: optax.GradientTransformation, layers: Sequence[HiddenLayer],
                       cfg: CBPConfig = CBPConfig()) -> optax.GradientTransformationExtraArgs:
    """`inner` followed by continual backprop on `layers` (see the module docstring).
    update(grads, state, params, activations={layer name: (..., units)}) -> (updates, state)."""
    layers = tuple(layers)
    if not layers:
        raise ValueError("continual backprop found no hidden layers; check continual.layers (a regex on MLP "
                         "module paths) or build the layer list with find_mlp_layers / dense_chain")
    inner = optax.with_extra_args_support(inner)
    d = float(cfg.decay_rate)

    def init_fn(params):
        flat = flatten_paths(params)
        for l in layers:
            for p in [q for q, _ in l.incoming] + list(l.outgoing):
                if p not in flat:
                    raise ValueError(f"continual layer {l.name}: no parameter {p!r}")
        z = lambda l, dt=jnp.float32: jnp.zeros(l.lead + (l.units,), dt)
        return CBPState(
            inner=inner.init(params),
            util=tuple(z(l) for l in layers),
            mean_act=tuple(z(l) for l in layers),
            age=tuple(z(l, jnp.int32) for l in layers),
            accum=tuple(jnp.zeros(l.lead, jnp.float32) for l in layers),
            count=jnp.zeros((), jnp.int32),
            rng=jax.random.PRNGKey(cfg.seed),
            replaced=jnp.zeros((), jnp.int32),
            act_abs=tuple(z(l) for l in layers),
            act_mean=tuple(z(l) for l in layers),
            micro=jnp.zeros((), jnp.int32),
        )

    def update_fn(grads, state, params=None, *, activations=None, **extra):
        if params is None:
            raise ValueError("continual backprop needs params in update(grads, state, params, activations=...)")
        if activations is None:
            raise ValueError("continual backprop needs the MLP activations: the task's loss_fn must return them "
                             f"in its metrics under {ACTIVATIONS!r} (see latent_jax.train.continual)")
        missing = [l.name for l in layers if l.name not in activations]
        if missing:
            raise ValueError(f"no activations for continual layers {missing}; got {sorted(activations)}")
        updates, inner_state = inner.update(grads, state.inner, params, **extra)
        flat_p = flatten_paths(params)
        flat_u = flatten_paths(updates)
        touched = sorted({p for l in layers for p, _ in l.incoming} | {p for l in layers for p in l.outgoing})
        after = {p: flat_p[p] + flat_u[p] for l in layers for p in l.outgoing}  # outgoing weights after this update
        real = real_update(state.inner, inner_state)  # False on MultiSteps' accumulating micro-steps
        count = state.count + real.astype(jnp.int32)
        apply = real & ((count % cfg.apply_freq) == 0)
        micro = state.micro + 1
        rng = state.rng
        if not cfg.accumulate:
            rng, draw = jax.random.split(rng)
            rng = jnp.where(apply, rng, state.rng)  # the stream advances only when a count is drawn
        # every update: utility, mean activation, age, replacement count (cheap, per unit), from
        # the activation statistics averaged over the update's micro-batches
        util, mean_act, age, accum, ks, act_abs, act_mean = [], [], [], [], [], [], []
        for i, l in enumerate(layers):
            absmean, mean = _unit_stats(activations[l.name], l)
            sa, sm = state.act_abs[i] + absmean, state.act_mean[i] + mean
            n = micro.astype(jnp.float32)
            u, f, a = track(state.util[i], state.mean_act[i], state.age[i], None, after, l, d, (sa / n, sm / n))
            u, f, a = jnp.where(real, u, state.util[i]), jnp.where(real, f, state.mean_act[i]), \
                jnp.where(real, a, state.age[i])
            if cfg.accumulate:
                k, acc = replacement_count(a, state.accum[i], cfg.replacement_rate, cfg.maturity_threshold, apply)
                acc = jnp.where(real, acc, state.accum[i])
            else:
                k = sampled_replacement_count(a, cfg.replacement_rate, cfg.maturity_threshold, apply,
                                              jax.random.fold_in(draw, i))
                acc = state.accum[i]
            util.append(u), mean_act.append(f), age.append(a), accum.append(acc), ks.append(k)
            act_abs.append(jnp.where(real, 0.0, sa)), act_mean.append(jnp.where(real, 0.0, sm))
        micro = jnp.where(real, 0, micro)
        n_replaced = sum(jnp.sum(k).astype(jnp.int32) for k in ks)
        moments = _moment_paths(inner_state, flat_p)
        flat_inner = flatten_paths(inner_state)

        def replace(args):
            """Choose the units, re-draw / zero their weights, zero their moments and state."""
            upd, inner_flat, util, mean_act, age, rng = args
            upd, inner_flat = dict(upd), dict(inner_flat)
            util, mean_act, age = list(util), list(mean_act), list(age)
            rng, key = jax.random.split(rng)
            leaf_masks: dict[str, jax.Array] = {}
            for i, l in enumerate(layers):
                m = lowest_utility(bias_corrected(util[i], age[i], d), age[i], ks[i], cfg.maturity_threshold)
                util[i], mean_act[i] = jnp.where(m, 0.0, util[i]), jnp.where(m, 0.0, mean_act[i])
                age[i] = jnp.where(m, 0, age[i])
                nl = len(l.lead)
                for j, (p, rep) in enumerate(l.incoming):
                    w = flat_p[p]
                    mb = _expand(m, w, nl, -1, rep)
                    if p.endswith("kernel"):
                        fresh = init_draw(jax.random.fold_in(key, i * 64 + j), w.shape, w.dtype, l, cfg)
                    else:
                        fresh = jnp.zeros_like(w)
                    upd[p] = jnp.where(mb, fresh - w, upd[p])
                    leaf_masks[p] = mb if p not in leaf_masks else leaf_masks[p] | mb
                for p in l.outgoing:
                    w = flat_p[p]
                    mb = _expand(m, w, nl, -2, 1)
                    upd[p] = jnp.where(mb, -w, upd[p])
                    leaf_masks[p] = mb if p not in leaf_masks else leaf_masks[p] | mb
            for sp, pp in moments.items():
                if pp in leaf_masks:
                    x = inner_flat[sp]
                    inner_flat[sp] = jnp.where(leaf_masks[pp], jnp.zeros_like(x), x)
            return upd, inner_flat, tuple(util), tuple(mean_act), tuple(age), rng

        args = ({p: flat_u[p] for p in touched}, {sp: flat_inner[sp] for sp in moments}, tuple(util),
                tuple(mean_act), tuple(age), rng)
        upd1, inner1, util, mean_act, age, rng = jax.lax.cond(n_replaced > 0, replace, lambda a: a, args)
        updates = _unflatten_like(updates, {**flat_u, **upd1})
        inner_state = _unflatten_like(inner_state, {**flat_inner, **inner1})
        new_state = CBPState(inner_state, util, mean_act, age, tuple(accum), count, rng, state.replaced + n_replaced,
                             tuple(act_abs), tuple(act_mean), micro)
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _unflatten_like(tree: Any, flat: dict) -> Any:
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return jax.tree_util.tree_unflatten(treedef, [flat[_path(p)] for p, _ in leaves_with_path])


# ------------------------------------------------------------------ baselines
class SnPState(NamedTuple):
    rng: jax.Array


def shrink_and_perturb(shrink: float, noise: float, seed: int = 0) -> optax.GradientTransformation:
    """Shrink-and-perturb (Ash & Adams 2020), applied every update after the optimizer:
    w <- (1 - shrink) (w + u) + noise * N(0, 1). Put it last in an optax.chain."""
    if not 0.0 <= shrink < 1.0 or noise < 0:
        raise ValueError(f"continual.snp_shrink={shrink} must be in [0, 1) and continual.snp_noise={noise} >= 0")

    def init_fn(params):
        return SnPState(jax.random.PRNGKey(seed))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("shrink_and_perturb needs params in update()")
        rng, key = jax.random.split(state.rng)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.tree_util.tree_unflatten(treedef, list(jax.random.split(key, len(leaves))))

        def one(u, p, k):
            w = p + u
            new = (1.0 - shrink) * w + noise * jax.random.normal(k, p.shape, jnp.float32).astype(p.dtype)
            return new - p

        return jax.tree.map(one, updates, params, keys), SnPState(rng)

    return optax.GradientTransformation(init_fn, update_fn)


class AfterRealState(NamedTuple):
    inner: Any
    post: Any


def after_real_updates(inner: optax.GradientTransformation, post: optax.GradientTransformation
                       ) -> optax.GradientTransformation:
    """`post` after `inner`, applied only on `inner`'s real updates: under gradient
    accumulation (optax.MultiSteps inside `inner`) the accumulating micro-steps emit zero
    updates and leave `post` and its state untouched, so shrink-and-perturb acts once per
    optimizer update whatever optim.grad_accum is."""
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        return AfterRealState(inner.init(params), post.init(params))

    def update_fn(updates, state, params=None, **extra):
        u, new_inner = inner.update(updates, state.inner, params, **extra)

        def apply(u, s):
            pu, ps = post.update(u, s, params)
            return jax.tree.map(lambda a, b: a.astype(b.dtype), pu, u), ps

        # post runs only on real updates (no noise drawn on the accumulating micro-steps)
        u, new_post = jax.lax.cond(real_update(state.inner, new_inner), apply, lambda u, s: (u, s), u, state.post)
        return u, AfterRealState(new_inner, new_post)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ------------------------------------------------------------------ from config.continual
def config_keys() -> dict[str, Any]:
    """config.continual's keys and defaults (configs/base.py holds the same)."""
    return dict(enabled=False, replacement_rate=1e-4, maturity_threshold=100, decay_rate=0.99, apply_freq=1,
                init="kaiming", init_std=0.02, gain=math.sqrt(2.0), layers="", seed=0, l2=0.0, snp_shrink=0.0,
                snp_noise=0.0, accumulate=True)


def _get(c: Any, k: str, default: Any) -> Any:
    if c is None:
        return default
    return c.get(k, default) if hasattr(c, "get") else getattr(c, k, default)


def cbp_config(c: Any) -> CBPConfig:
    """CBPConfig from config.continual."""
    d = config_keys()
    return CBPConfig(replacement_rate=float(_get(c, "replacement_rate", d["replacement_rate"])),
                     maturity_threshold=int(_get(c, "maturity_threshold", d["maturity_threshold"])),
                     decay_rate=float(_get(c, "decay_rate", d["decay_rate"])),
                     apply_freq=int(_get(c, "apply_freq", d["apply_freq"])),
                     init=str(_get(c, "init", d["init"])), init_std=float(_get(c, "init_std", d["init_std"])),
                     gain=float(_get(c, "gain", d["gain"])), seed=int(_get(c, "seed", d["seed"])),
                     accumulate=bool(_get(c, "accumulate", d["accumulate"])))


def wrap_optimizer(tx: optax.GradientTransformation, params: Any, c: Any,
                   layers: Sequence[HiddenLayer] | None = None) -> optax.GradientTransformation:
    """`tx` with config.continual's plasticity keepers: L2 on the gradient before it
    (continual.l2), shrink-and-perturb after it (snp_shrink / snp_noise), continual backprop
    around it (enabled; on `layers`, default the MLPs matching continual.layers). Unchanged
    when none is on."""
    l2 = float(_get(c, "l2", 0.0) or 0.0)
    shrink, noise = float(_get(c, "snp_shrink", 0.0) or 0.0), float(_get(c, "snp_noise", 0.0) or 0.0)
    if l2 < 0:
        raise ValueError(f"continual.l2={l2}; use >= 0")
    if l2 > 0:
        tx = optax.chain(optax.add_decayed_weights(l2), tx)
    if shrink > 0 or noise > 0:
        tx = after_real_updates(tx, shrink_and_perturb(shrink, noise, int(_get(c, "seed", 0))))
    if bool(_get(c, "enabled", False)):
        if layers is None:
            layers = find_mlp_layers(params, str(_get(c, "layers", "") or ""))
        tx = continual_backprop(tx, layers, cbp_config(c))
    return tx


def cbp_state(opt_state: Any) -> CBPState | None:
    """The CBPState inside an optimizer state (None when continual backprop is off)."""
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, CBPState))
             if isinstance(s, CBPState)]
    return found[0] if found else None


# ------------------------------------------------------------------ the Trainer's hooks
def trainer_optimizer(tx: optax.GradientTransformation, params: Any, config: Any, task: Any = None
                      ) -> tuple[optax.GradientTransformation, str]:
    """(tx wrapped per config.continual, a key for the compile cache). Continual backprop's
    layers come from task.continual_layers(params) when the task defines it (plain MLPs),
    else from the decoder MLPs matching continual.layers."""
    c = config.get("continual") if hasattr(config, "get") else None
    if c is None:
        return tx, ""
    layers = None
    if bool(_get(c, "enabled", False)) and hasattr(task, "continual_layers"):
        layers = task.continual_layers(params)
    d = c.to_dict() if hasattr(c, "to_dict") else dict(c)
    return wrap_optimizer(tx, params, c, layers), repr(sorted(d.items()))


def update_extras(aux: dict, opt_state: Any) -> dict:
    """Pops the activations a loss_fn returned under ACTIVATIONS from its metrics `aux` and
    returns the optimizer update's extra arguments ({'activations': ...} when continual
    backprop is on)."""
    acts = aux.pop(ACTIVATIONS, None)
    return {"activations": acts} if acts is not None and cbp_state(opt_state) is not None else {}
