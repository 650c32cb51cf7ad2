"""Attention forward + backward at the Coconut default's prefix shape, several layouts, one
process, interleaved timing (the CPU is shared: compare ratios, not absolute times).

    taskset -c 1 python benchmarks/attn_layouts.py --threads 1
"""
import os, sys, time, statistics
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from threads import pin_xla_threads
pin_xla_threads()
import jax, jax.numpy as jnp, numpy as np

B, T, H, D = 64, 67, 8, 16
S = T
rng = np.random.default_rng(0)
q = jnp.asarray(rng.standard_normal((B, T, H, D)), jnp.float32)
k = jnp.asarray(rng.standard_normal((B, T, H, D)), jnp.float32)
v = jnp.asarray(rng.standard_normal((B, T, H, D)), jnp.float32)
pos = jnp.asarray(np.tile(np.arange(T), (B, 1)), jnp.int32)
pos = pos.at[: B // 2, :5].set(-1)  # some padding
neg = jnp.finfo(jnp.float32).min


def mask(qp, kp):
    return (kp[:, None, :] >= 0) & (kp[:, None, :] <= qp[:, :, None])


def cur(q, k, v):  # today's layout
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    qg = q.reshape(B, T, H, 1, D)
    sc = jnp.einsum("btkgd,bksd->bkgts", qg, kh, preferred_element_type=jnp.float32) * D ** -0.5
    sc = jnp.where(mask(pos, pos)[:, None, None], sc, neg)
    p = jax.nn.softmax(sc, -1)
    o = jnp.einsum("bkgts,bksd->btkgd", p, vh)
    return o.reshape(B, T, H * D)


def bhtd(q, k, v):  # heads-major before the matmuls
    qh, kh, vh = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    sc = jnp.einsum("bhtd,bhsd->bhts", qh, kh) * D ** -0.5
    sc = jnp.where(mask(pos, pos)[:, None], sc, neg)
    p = jax.nn.softmax(sc, -1)
    o = jnp.einsum("bhts,bhsd->bhtd", p, vh)
    return o.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def merged(q, k, v):  # (B*H, T, D)
    qh, kh, vh = (a.transpose(0, 2, 1, 3).reshape(B * H, T, D) for a in (q, k, v))
    sc = jnp.matmul(qh, kh.transpose(0, 2, 1)) * D ** -0.5
    m = jnp.broadcast_to(mask(pos, pos)[:, None], (B, H, T, S)).reshape(B * H, T, S)
    sc = jnp.where(m, sc, neg)
    p = jax.nn.softmax(sc, -1)
    o = jnp.matmul(p, vh)
    return o.reshape(B, H, T, D).transpose(0, 2, 1, 3).reshape(B, T, H * D)


def _fwd_core(qh, kh, vh, bias):
    sc = jnp.einsum("bhtd,bhsd->bhts", qh, kh) + bias
    m = jnp.max(sc, -1, keepdims=True)
    e = jnp.exp(sc - m)
    p = e / jnp.sum(e, -1, keepdims=True)
    return jnp.einsum("bhts,bhsd->bhtd", p, vh), p


@jax.custom_vjp
def attn_core(qh, kh, vh, bias):
    return _fwd_core(qh, kh, vh, bias)[0]


def _f(qh, kh, vh, bias):
    o, p = _fwd_core(qh, kh, vh, bias)
    return o, (qh, kh, vh, p, o)


def _b(res, do):
    qh, kh, vh, p, o = res
    dv = jnp.einsum("bhts,bhtd->bhsd", p, do)
    dp = jnp.einsum("bhtd,bhsd->bhts", do, vh)
    delta = jnp.sum(do * o, -1, keepdims=True)
    ds = p * (dp - delta)
    dq = jnp.einsum("bhts,bhsd->bhtd", ds, kh)
    dk = jnp.einsum("bhts,bhtd->bhsd", ds, qh)
    return dq, dk, dv, None


attn_core.defvjp(_f, _b)


def cvjp(q, k, v):
    qh, kh, vh = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    bias = jnp.where(mask(pos, pos), 0.0, neg)[:, None]
    o = attn_core(qh * D ** -0.5, kh, vh, bias)
    return o.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def bias_bhtd(q, k, v):  # additive mask instead of where
    qh, kh, vh = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    sc = jnp.einsum("bhtd,bhsd->bhts", qh * D ** -0.5, kh) + jnp.where(mask(pos, pos), 0.0, neg)[:, None]
    p = jax.nn.softmax(sc, -1)
    o = jnp.einsum("bhts,bhsd->bhtd", p, vh)
    return o.transpose(0, 2, 1, 3).reshape(B, T, H * D)


impls = dict(cur=cur, bhtd=bhtd, merged=merged, cvjp=cvjp, bias_bhtd=bias_bhtd)
w = jnp.asarray(rng.standard_normal((B, T, H * D)), jnp.float32)
fns = {}
for n, f in impls.items():
    g = jax.jit(jax.value_and_grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) * w), argnums=(0, 1, 2)))
    fns[n] = g
ref = fns["cur"](q, k, v)
for n, g in fns.items():
    r = g(q, k, v)
    err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(r), jax.tree.leaves(ref)))
    print(f"{n}: max diff vs cur {err:.2e}")
ts = {n: [] for n in fns}
for _ in range(int(os.environ.get("REPS", 15))):
    for n, g in fns.items():
        t = time.perf_counter(); jax.block_until_ready(g(q, k, v)); ts[n].append(time.perf_counter() - t)
for n in fns:
    print(f"{n:10s} median {1e3 * statistics.median(ts[n]):7.2f} ms  min {1e3 * min(ts[n]):7.2f} ms")
