"""Per-parameter-group freeze / wake schedules: staged unfreezing (vision tower, projector,
LM) with optax.multi_transform, each group's updates scaled by its own gate in [0, 1].

A group is frozen (gate 0) until `wake` (a fraction of the run's updates), opens linearly
over `ramp`, is fully awake (gate 1), and may fall asleep again from `sleep` (closing over
the same ramp). One group waking a configurable fraction ahead of another is two groups
whose `wake` differ by that fraction (`wake_ahead`). This is the precise core of the
CinePile seed's "deep sleep" (the episodic memory waking ahead of the base model); see
docs/continual.md for what of the seed it covers.

    groups = parse_groups("projector=mm_projector@0+0.05;vision=vision@0.2+0.1")
    tx = staged_optimizer(params, config.optim, total_steps, groups)
    state = trainer.init_state(params, total_steps, tx=tx)

Params matching no group form the group 'rest', always awake. Each group has its own
optimizer state (multi_transform), so moments of a sleeping group stay as they were; its
gradients still flow (a frozen tower is not cheaper to differentiate).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from latent_jax.train.optim import make_optimizer, param_path

REST = "rest"


@dataclasses.dataclass(frozen=True)
class GroupSchedule:
    """A named group of params (`pattern`: regex searched in the '/'-joined path) and when it
    wakes (`wake`), how long it takes to open (`ramp`), and when it sleeps again (`sleep`,
    None = never); all as fractions of the run's optimizer updates."""

    name: str
    pattern: str
    wake: float = 0.0
    ramp: float = 0.0
    sleep: float | None = None

    def __post_init__(self):
        if not self.name or self.name == REST:
            raise ValueError(f"group name {self.name!r}; use a non-empty name other than {REST!r}")
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"group {self.name}: pattern {self.pattern!r} is not a regex ({e})") from None
        if not 0.0 <= self.wake <= 1.0 or self.ramp < 0:
            raise ValueError(f"group {self.name}: wake={self.wake} must be in [0, 1] and ramp={self.ramp} >= 0")
        if self.sleep is not None and self.sleep < self.wake + self.ramp:
            raise ValueError(f"group {self.name}: sleep={self.sleep} comes before it is awake "
                             f"(wake + ramp = {self.wake + self.ramp}); use a later sleep")


def gate(group: GroupSchedule, total_steps: int) -> optax.Schedule:
    """The group's update multiplier per optimizer update (0 asleep, 1 awake, linear between)."""
    total = max(1, int(total_steps))
    w, r = group.wake * total, group.ramp * total
    s = None if group.sleep is None else group.sleep * total

    def f(step):
        t = jnp.asarray(step, jnp.float32)
        up = jnp.clip((t - w + 1.0) / r, 0.0, 1.0) if r > 0 else (t >= w).astype(jnp.float32)
        if s is None:
            return up
        down = 1.0 - (jnp.clip((t - s + 1.0) / r, 0.0, 1.0) if r > 0 else (t >= s).astype(jnp.float32))
        return up * down

    return f


def wake_ahead(leader: GroupSchedule, follower_name: str, follower_pattern: str, lead: float) -> GroupSchedule:
    """A group that wakes `lead` (a fraction of the run) after `leader`, with the same ramp
    (the seed: the episodic memory wakes ahead of the base model)."""
    return GroupSchedule(follower_name, follower_pattern, min(1.0, leader.wake + lead), leader.ramp,
                         None if leader.sleep is None else min(1.0, leader.sleep + lead))


def parse_groups(spec: str) -> list[GroupSchedule]:
    """'name=regex@wake[+ramp][-sleep];...' -> groups (e.g. 'vision=vision@0.2+0.05-0.9')."""
    out = []
    for part in [p.strip() for p in (spec or "").split(";") if p.strip()]:
        m = re.fullmatch(r"([\w.-]+)=(.+?)@([0-9.eE-]+?)(?:\+([0-9.eE-]+?))?(?:-([0-9.eE]+))?", part)
        if not m:
            raise ValueError(f"wake schedule {part!r}; write name=regex@wake[+ramp][-sleep] with fractions of the "
                             "run, e.g. vision=vision_tower@0.2+0.05")
        name, pat, w, r, s = m.groups()
        out.append(GroupSchedule(name, pat, float(w), float(r or 0.0), None if s is None else float(s)))
    names = [g.name for g in out]
    if len(set(names)) != len(names):
        raise ValueError(f"wake schedule names {names} repeat; give each group its own name")
    return out


def group_labels(params: Any, groups: Sequence[GroupSchedule]) -> Any:
    """Pytree of group names (first matching group; 'rest' when none matches)."""
    def one(path, _):
        p = param_path(path)
        for g in groups:
            if re.search(g.pattern, p):
                return g.name
        return REST

    return jax.tree_util.tree_map_with_path(one, params)


def staged(params: Any, groups: Sequence[GroupSchedule], make_tx: Callable[[], optax.GradientTransformation],
           total_steps: int) -> optax.GradientTransformation:
    """optax.multi_transform over the groups: each group gets its own `make_tx()` followed by
    its gate; 'rest' gets `make_tx()` alone. A group that matches no param is an error."""
    labels = group_labels(params, groups)
    used = set(jax.tree.leaves(labels))
    empty = [g.name for g in groups if g.name not in used]
    if empty:
        raise ValueError(f"wake schedule groups {empty} match no parameter; check their regex against paths such "
                         f"as {next(iter(_paths(params)), '')!r}")
    transforms = {g.name: optax.chain(make_tx(), optax.scale_by_schedule(gate(g, total_steps))) for g in groups}
    transforms[REST] = make_tx()
    return optax.multi_transform(transforms, labels)


def staged_optimizer(params: Any, optim_config: Any, total_steps: int, groups: Sequence[GroupSchedule] | str):
    """`staged` with config.optim's optimizer (train/optim.make_optimizer) in every group."""
    if isinstance(groups, str):
        groups = parse_groups(groups)
    return staged(params, groups, lambda: make_optimizer(params, optim_config, total_steps), total_steps)


def _paths(params):
    return [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
