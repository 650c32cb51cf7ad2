"""Device mesh, logical-axis sharding rules, placement of params and batches.

Params stay plain pytrees: their logical axes are derived from their names (one table,
`PARAM_AXES`), and one rules table (`DEFAULT_RULES`) maps logical axes to mesh axes
('data', 'fsdp', 'tensor'). Batches are split over ('data', 'fsdp').

Activations are pinned by `constrain(x, logical_axes)` (the decoder calls it on the hidden
states at every layer boundary): with a mesh active while the step is traced (`use_mesh`, or
`jax.set_mesh`), hidden states stay split by batch and FSDP gathers each layer's weights,
instead of contracting over the sharded hidden dimension; without a mesh it is a no-op.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import re
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
DEFAULT_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "norm": None,
    "layers": None,
    "vision": None,
    "act_embed": None,  # the hidden dimension of activations: whole on every device
}

_RULES: contextvars.ContextVar[dict | None] = contextvars.ContextVar("latent_jax_rules", default=None)

# (regex on the '/'-joined param path, logical axes of the unstacked array); first match wins.
PARAM_AXES: list[tuple[str, tuple[str | None, ...]]] = [
    (r"embed_tokens/embedding$", ("vocab", "embed")),
    (r"lm_head/kernel$", ("embed", "vocab")),
    (r"(q_proj|qkv_proj)/kernel$", ("embed", "heads")),
    (r"(k_proj|v_proj)/kernel$", ("embed", "kv_heads")),
    (r"(q_proj|qkv_proj)/bias$", ("heads",)),
    (r"(k_proj|v_proj)/bias$", ("kv_heads",)),
    (r"o_proj/kernel$", ("heads", "embed")),
    (r"(gate_proj|up_proj|gate_up_proj)/kernel$", ("embed", "mlp")),
    (r"(gate_proj|up_proj|gate_up_proj)/bias$", ("mlp",)),
    (r"down_proj/kernel$", ("mlp", "embed")),
    (r"(scale|bias)$", ("norm",)),
]


def make_mesh(shape: Sequence[int] | dict | None = None, devices=None) -> Mesh:
    """A Mesh with axes ('data', 'fsdp', 'tensor'). `shape` is a 3-sequence or a dict with
    those keys; one entry may be -1 (= all remaining devices). Default: all devices on 'data'."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if shape is None:
        shape = (-1, 1, 1)
    if isinstance(shape, dict) or hasattr(shape, "items"):
        unknown = set(dict(shape)) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"unknown mesh axes {sorted(unknown)}; valid: {MESH_AXES}")
        shape = tuple(int(dict(shape).get(a, 1)) for a in MESH_AXES)
    shape = [int(s) for s in shape]
    if len(shape) != 3:
        raise ValueError(f"mesh shape needs 3 entries (data, fsdp, tensor), got {shape}")
    if shape.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if n % known:
            raise ValueError(f"{n} devices cannot be split as {shape}")
        shape[shape.index(-1)] = n // known
    if math.prod(shape) != n:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices but {n} are visible; "
            "set config.mesh so the product equals the device count (-1 = the rest)"
        )
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def _path_str(path) -> str:
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return "/".join(parts)


def param_axes(path: str, ndim: int) -> tuple[str | None, ...]:
    """Logical axes of a param of `ndim` dims at the '/'-joined `path` (PARAM_AXES; extra leading
    dims, as stacked scan layers have, are 'layers')."""
    for pat, axes in PARAM_AXES:
        if re.search(pat, path):
            extra = ndim - len(axes)
            if extra < 0:
                break
            return ("layers",) * extra + tuple(axes)
    return (None,) * ndim


def logical_axes(params) -> Any:
    """Pytree of logical-axis tuples matching `params` (stacked scan layers get 'layers' first)."""
    return jax.tree_util.tree_map_with_path(lambda path, x: param_axes(_path_str(path), np.ndim(x)), params)


def spec_for(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: dict | None = None) -> P:
    """PartitionSpec for one array: logical axes -> mesh axes, dropping any mesh axis that does
    not divide the dimension or is already used by an earlier dimension."""
    rules = DEFAULT_RULES if rules is None else rules
    used: set[str] = set()
    out = []
    for ax, dim in zip(axes, shape):
        m = rules.get(ax) if ax is not None else None
        if m is None:
            out.append(None)
            continue
        cand = (m,) if isinstance(m, str) else tuple(m)
        cand = tuple(c for c in cand if c not in used and mesh.shape.get(c, 1) > 1)
        size = math.prod(mesh.shape[c] for c in cand) if cand else 1
        if not cand or dim % size:
            out.append(None)
            continue
        used.update(cand)
        out.append(cand[0] if len(cand) == 1 else cand)
    return P(*out)


def param_shardings(params, mesh: Mesh, rules: dict | None = None):
    """Pytree of NamedSharding for params (works on arrays or ShapeDtypeStructs)."""
    axes = logical_axes(params)
    return jax.tree.map(
        lambda x, a: NamedSharding(mesh, spec_for(a, np.shape(x), mesh, rules)),
        params,
        axes,
        is_leaf=lambda t: isinstance(t, tuple) and all(isinstance(e, (str, type(None))) for e in t),
    )


def shard_params(params, mesh: Mesh, rules: dict | None = None):
    """Place params on the mesh according to the rules."""
    return jax.device_put(params, param_shardings(params, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: dict | None = None) -> NamedSharding:
    """Batch-major arrays: dim 0 over the 'batch' rule's mesh axes, the rest replicated."""
    rules = DEFAULT_RULES if rules is None else rules
    b = rules["batch"]
    b = tuple(a for a in ((b,) if isinstance(b, str) else b) if mesh.shape[a] > 1) or None
    return NamedSharding(mesh, P(b, *([None] * (ndim - 1))))


def shard_batch(batch, mesh: Mesh, rules: dict | None = None):
    """Place a dict/pytree of host arrays (batch-major) on the mesh."""
    return jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh, np.ndim(x), rules)), batch)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def spans_processes(x: Any) -> bool:
    """True for a jax.Array whose shards live on several processes and no process holds it
    whole (FSDP or tensor sharding across hosts): np.asarray / jax.device_get cannot read it."""
    return isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated


def to_host(tree: Any) -> Any:
    """Every array leaf of `tree` as a whole numpy array on this process (jax.device_get for
    arrays it can read). Arrays sharded across processes are gathered with
    multihost_utils.process_allgather, a collective: in a multi-host run every process calls
    this with the same tree, in the same order. Use it only where a host copy is truly needed
    (HF/safetensors export, generated tokens); Orbax saves sharded arrays as they are."""

    def one(x):
        if spans_processes(x):
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return jax.device_get(x)

    return jax.tree.map(one, tree)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: dict | None = None) -> Iterator[Mesh]:
    """Trace (jit, lower, first call) under this to make `mesh` and `rules` the ones that
    `constrain` pins activations to (jax.set_mesh plus the rules table)."""
    token = _RULES.set(rules)
    try:
        with jax.set_mesh(mesh):
            yield mesh
    finally:
        _RULES.reset(token)


def current_rules() -> dict:
    """The rules table `constrain` uses now (use_mesh's, else DEFAULT_RULES)."""
    return _RULES.get() or DEFAULT_RULES


def constrain(x: jax.Array, axes: Sequence[str | None], rules: dict | None = None) -> jax.Array:
    """`x` sharded by its logical `axes` on the mesh active during tracing (`use_mesh` or
    jax.set_mesh); unchanged when no mesh (or a one-device mesh) is active."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    rules = rules if rules is not None else current_rules()
    return jax.lax.with_sharding_constraint(x, spec_for(axes, x.shape, mesh, rules))


def cast_for_compute(w: jax.Array, dtype, axes: Sequence[str | None]) -> jax.Array:
    """The weight `w` in the compute `dtype`, cast where it is stored: under a mesh the cast copy is
    pinned to the param's sharding (logical `axes`), so FSDP all-gathers the compute-dtype copy
    (bf16: half the bytes of gathering fp32 and casting after), whatever sharding propagation
    would choose. Without a mesh, a plain cast."""
    if w.dtype == np.dtype(dtype):
        return w
    return constrain(w.astype(dtype), axes)


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, heartbeat_timeout_s: int | None = None) -> None:
    """Multi-host init (TPU pods, multi-node GPU, or several processes on one machine); call
    before any device is touched.

    Arguments left out are read from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID (jax itself reads only the first), else discovered by jax (TPU VMs, SLURM,
    Open MPI). On CPU, cross-process collectives use gloo. heartbeat_timeout_s: how long a
    process waits for a peer that stopped answering before it fails (config
    heartbeat_timeout_s; jax's default, 100 s, when None)."""
    env = os.environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = _env_int("JAX_NUM_PROCESSES")
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = _env_int("JAX_PROCESS_ID")
    if coordinator and (num_processes is None) != (process_id is None):
        raise ValueError("set both JAX_NUM_PROCESSES and JAX_PROCESS_ID (or neither, on TPU VMs / SLURM) "
                         f"with JAX_COORDINATOR_ADDRESS={coordinator}")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"JAX_PROCESS_ID={process_id} must be in [0, {num_processes}); number processes 0..N-1")
    platforms = (env.get("JAX_PLATFORMS") or jax.config.jax_platforms or "").split(",")
    if "cpu" in platforms[:1]:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if heartbeat_timeout_s is not None:
        if int(heartbeat_timeout_s) < 1:
            raise ValueError(f"heartbeat_timeout_s={heartbeat_timeout_s}; use a number of seconds >= 1")
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   heartbeat_timeout_seconds=int(heartbeat_timeout_s))
    else:
        jax.distributed.initialize(coordinator, num_processes, process_id)


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise ValueError(f"{name}={os.environ[name]!r} is not an integer; set it to a number") from None
