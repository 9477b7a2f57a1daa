"""Safety envelope: every command passes through here before it leaves the executor.

Joint targets (``filter_joint``), in this order:

1. position limits: clamp into ``[lower + margin, upper - margin]``;
2. velocity and per-step limits: the step from the previous command is scaled *uniformly*
   (all joints by the same factor, so the direction of motion, and hence the tool path,
   is kept) until ``|dq_j| <= min(vel_max_j * velocity_scale * dt, max_step)``, where ``dt``
   is the time that really elapsed since the previous command (a late tick may take a
   longer step, never a faster one; capped at ``max_tick_dt``);
3. acceleration: given the previous command's velocity, each joint's velocity change is
   kept within ``acc_max_j * dt`` (then 1-2 again: position and step limits win);
4. workspace box: the tool position ``fk(q)`` must stay in ``[workspace_min, workspace_max]``.
   ``workspace_mode='hold'`` (default) rejects the step and holds the previous safe command;
   ``'project'`` bisects along the step for the furthest safe point. If the previous command
   is itself outside the box (e.g. the arm started there), steps that do not increase the
   violation are allowed, so the arm can always move back in.

Because the limit box is convex and the previous command is inside it, steps 2-4 never
leave it again. Twists (``filter_twist``) get linear / angular speed caps (vector norm,
direction kept) and lose any component that would carry the tool out of the box within
one period. Every intervention bumps ``counters[name]`` and appends a reason string to
``reasons`` (the caller clears it each tick and publishes both as diagnostics).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import numpy as np

from roboalign_ros.parameters import default

FK = Callable[[np.ndarray], np.ndarray]


def _arr(x, n: int, name: str, allow_inf: bool = False) -> np.ndarray:
    try:
        a = np.broadcast_to(np.asarray(x, dtype=float), (n,)).copy()
    except ValueError:
        raise ValueError(f'{name}: expected {n} values, got {x!r}') from None
    ok = ~np.isnan(a) if allow_inf else np.isfinite(a)
    if not np.all(ok):
        raise ValueError(f'{name}: must be {"a number" if allow_inf else "finite"}, got {a}')
    return a


@dataclass
class SafetyLimits:
    """Limits of the envelope; arrays are per arm joint, in config order.

    ``max_step`` is a per-tick cap in rad (scalar or per joint) independent of the period,
    so a mis-set control rate cannot turn the velocity limit into a large jump.
    """

    lower: np.ndarray
    upper: np.ndarray
    vel_max: np.ndarray
    joint_names: tuple[str, ...] = ()
    margin: float | np.ndarray = default("executor_node", "safety.margin")
    velocity_scale: float = default("executor_node", "safety.velocity_scale")
    max_step: float | np.ndarray = default("executor_node", "safety.max_step")
    acc_max: float | np.ndarray = default("executor_node", "safety.acc_max")
    max_tick_dt: float = 0.05                     # s; a longer gap still allows one such step
    workspace_min: np.ndarray | None = None       # (3,) m, tool position in base_link
    workspace_max: np.ndarray | None = None
    workspace_mode: Literal['hold', 'project'] = default("executor_node", "safety.workspace_mode")
    max_linear_speed: float = 0.25                # m/s (ee_delta)
    max_angular_speed: float = 1.0                # rad/s (ee_delta)
    gripper_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        n = len(np.atleast_1d(self.lower))
        if n == 0:
            raise ValueError('lower: no joints')
        # +-inf: continuous joints / no URDF velocity limit (max_step still bounds the step).
        self.lower = _arr(self.lower, n, 'lower', allow_inf=True)
        self.upper = _arr(self.upper, n, 'upper', allow_inf=True)
        self.vel_max = _arr(self.vel_max, n, 'vel_max', allow_inf=True)
        self.margin = _arr(self.margin, n, 'margin')
        self.max_step = _arr(self.max_step, n, 'max_step')
        self.acc_max = _arr(self.acc_max, n, 'acc_max', allow_inf=True)
        if not self.joint_names:
            self.joint_names = tuple(f'joint{i}' for i in range(n))
        if len(self.joint_names) != n:
            raise ValueError(f'joint_names: {len(self.joint_names)} names for {n} joints')
        if np.any(self.lower + self.margin > self.upper - self.margin):
            raise ValueError('margin: lower + margin > upper - margin for some joint')
        if np.any(self.vel_max <= 0) or np.any(self.max_step <= 0) or np.any(self.acc_max <= 0):
            raise ValueError('vel_max / max_step / acc_max: must be > 0')
        if not self.max_tick_dt > 0:
            raise ValueError(f'max_tick_dt: must be > 0, got {self.max_tick_dt}')
        if not 0 < self.velocity_scale <= 1:
            raise ValueError(f'velocity_scale: must be in (0, 1], got {self.velocity_scale}')
        if (self.workspace_min is None) != (self.workspace_max is None):
            raise ValueError('workspace_min / workspace_max: give both or neither')
        if self.workspace_min is not None:
            self.workspace_min = _arr(self.workspace_min, 3, 'workspace_min')
            self.workspace_max = _arr(self.workspace_max, 3, 'workspace_max')
            if np.any(self.workspace_min >= self.workspace_max):
                raise ValueError('workspace_min: must be < workspace_max on every axis')
        if self.workspace_mode not in ('hold', 'project'):
            raise ValueError(f"workspace_mode: 'hold' or 'project', got {self.workspace_mode!r}")
        lo, hi = self.gripper_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f'gripper_range: need 0 <= lo < hi <= 1, got {self.gripper_range}')
        if self.max_linear_speed <= 0 or self.max_angular_speed <= 0:
            raise ValueError('max_linear_speed / max_angular_speed: must be > 0')


class SafetyEnvelope:
    """Applies :class:`SafetyLimits` at a fixed control ``period`` (s).

    ``fk(q) -> (3,)`` tool position (extra outputs, e.g. a 4x4 pose, are accepted: the
    translation is taken) is required for the workspace box; without it the box is skipped
    and ``has_workspace`` is False.
    """

    BISECTION_STEPS = 12  # 1/4096 of a step: far below any joint's resolution

    def __init__(self, limits: SafetyLimits, period: float, fk: FK | None = None):
        if not period > 0:
            raise ValueError(f'period: must be > 0, got {period}')
        self.limits = limits
        self.period = float(period)
        self.fk = fk
        self.n = len(limits.lower)
        self._lo = limits.lower + limits.margin
        self._hi = limits.upper - limits.margin
        self._step_max = np.minimum(limits.vel_max * limits.velocity_scale * self.period,
                                    limits.max_step)
        self._vel_binds = limits.vel_max * limits.velocity_scale * self.period <= limits.max_step
        self.has_workspace = fk is not None and limits.workspace_min is not None
        self.counters: Counter[str] = Counter()
        self.reasons: list[str] = []
        self._step = np.empty(self.n)
        self._tmp = np.empty(self.n)
        self._clipped = np.empty(self.n)  # the position-clipped target (braking distance)

    @classmethod
    def from_robot(cls, spec: Any, period: float, overrides: Mapping[str, Any] | None = None,
                   fk: FK | None = None) -> SafetyEnvelope:
        """Build from a robot spec (duck-typed) and optional tightening ``overrides``.

        ``spec`` needs ``arm_joints, lower, upper, velocity`` and may have
        ``workspace_min, workspace_max``; ``overrides`` are :class:`SafetyLimits` fields.
        """
        kw = dict(lower=spec.lower, upper=spec.upper, vel_max=spec.velocity,
                  joint_names=tuple(spec.arm_joints),
                  workspace_min=getattr(spec, 'workspace_min', None),
                  workspace_max=getattr(spec, 'workspace_max', None))
        base = SafetyLimits(**kw)
        overrides = dict(overrides or {})
        unknown = set(overrides) - {f.name for f in fields(SafetyLimits)}
        if unknown:
            raise ValueError(f'overrides: unknown fields {sorted(unknown)}')
        limits = replace(base, **overrides)
        # Config may only tighten what the URDF allows (CONVENTIONS.md).
        for name, loose in (('lower', limits.lower < base.lower),
                            ('upper', limits.upper > base.upper),
                            ('vel_max', limits.vel_max > base.vel_max)):
            if np.any(loose):
                raise ValueError(f'overrides.{name}: may only tighten the robot limits')
        return cls(limits, period, fk)

    # -- helpers ---------------------------------------------------------------------------

    def flag(self, name: str, reason: str) -> None:
        """Count limit ``name`` as binding this tick and say why (``reasons``)."""
        self.counters[name] += 1
        self.reasons.append(f'{name}: {reason}')


    def tool_position(self, q: np.ndarray) -> np.ndarray:
        """Tool position (3,) from ``fk``; a 4x4 homogeneous pose is accepted too."""
        p = np.asarray(self.fk(q), dtype=float)
        return p[:3, 3] if p.ndim == 2 else p[:3]

    def box_violation(self, p: np.ndarray) -> float:
        """Sum over axes of the distance outside the workspace box (0 inside)."""
        lim = self.limits
        return float(np.maximum(lim.workspace_min - p, 0.0).sum()
                     + np.maximum(p - lim.workspace_max, 0.0).sum())

    def joint_within(self, q: np.ndarray, tol: float = 1e-9) -> bool:
        """Whether ``q`` satisfies the (margin-shrunk) position limits."""
        return bool(np.all(q >= self._lo - tol) and np.all(q <= self._hi + tol))

    # -- filters ---------------------------------------------------------------------------

    def step_limit(self, dt: float) -> np.ndarray:
        """Largest per-joint step (rad) allowed ``dt`` seconds after the previous command."""
        dt = min(max(dt, 0.0), self.limits.max_tick_dt)
        return np.minimum(self.limits.vel_max * self.limits.velocity_scale * dt,
                          self.limits.max_step)

    def filter_joint(self, target: np.ndarray, last: np.ndarray, out: np.ndarray,
                     dt: float | None = None, v_prev: np.ndarray | None = None) -> np.ndarray:
        """Safe joint command for ``target`` given the previous command ``last``, into ``out``.

        ``dt``: seconds since ``last`` was commanded (default: the nominal period);
        ``v_prev``: the velocity ``last`` was commanded with (None: no acceleration limit).
        ``out`` may alias ``target`` but not ``last``.
        """
        dt = self.period if dt is None else float(dt)
        step_max = self._step_max if dt == self.period else self.step_limit(dt)
        lim = self.limits
        if not np.all(np.isfinite(target)):  # defensive: chunks are validated upstream
            self.flag('nonfinite', 'non-finite target, holding')
            out[:] = last
            return out
        # 1. position limits
        np.clip(target, self._lo, self._hi, out=out)
        if not np.array_equal(out, target):
            j = int(np.argmax(np.abs(out - target)))
            self.flag('position_limit', f'{lim.joint_names[j]} {target[j]:.4f} -> '
                                         f'{out[j]:.4f} rad')
        # 2. velocity / per-step limit, uniform scaling of the step
        np.copyto(self._clipped, out)  # kept for the braking distance below (out is reused)
        step = np.subtract(out, last, out=self._step)
        ratio = np.abs(step, out=self._tmp)
        with np.errstate(divide='ignore', invalid='ignore'):
            ratio /= step_max
        ratio[~np.isfinite(ratio)] = np.inf  # dt = 0: no step at all
        ratio[step == 0.0] = 0.0
        j = int(np.argmax(ratio))
        worst = ratio[j]
        if worst > 1.0:
            step *= 1.0 / worst
            np.add(last, step, out=out)
            kind = 'velocity_limit' if self._vel_binds[j] else 'step_limit'
            self.flag(kind, f'{lim.joint_names[j]} step scaled by {1.0 / worst:.3f}')
        # 3. acceleration: per joint, no faster than it can still brake to the target, and
        #    the velocity change within acc_max * dt (no overshoot, no instant start)
        if v_prev is not None and dt > 0:
            tdt = min(dt, lim.max_tick_dt)
            v = step / tdt
            brake = np.sqrt(2.0 * lim.acc_max * np.abs(self._clipped - last))
            v_ok = np.clip(np.clip(v, -brake, brake), v_prev - lim.acc_max * tdt,
                           v_prev + lim.acc_max * tdt)
            if not np.allclose(v_ok, v, rtol=0.0, atol=1e-9):
                j = int(np.argmax(np.abs(v_ok - v)))
                self.flag('acceleration_limit', f'{lim.joint_names[j]} velocity '
                                                 f'{v[j]:.3f} -> {v_ok[j]:.3f} rad/s')
                np.multiply(v_ok, tdt, out=step)
                np.clip(step, -step_max, step_max, out=step)
                np.add(last, step, out=out)
                np.clip(out, self._lo, self._hi, out=out)
        # 4. workspace box
        if self.has_workspace:
            v_new = self.box_violation(self.tool_position(out))
            if v_new > 0.0:
                v_last = self.box_violation(self.tool_position(last))
                if v_new > v_last + 1e-12:
                    self._workspace_fallback(last, out, v_last)
        return out

    def _workspace_fallback(self, last: np.ndarray, out: np.ndarray, v_last: float) -> None:
        step = np.subtract(out, last, out=self._step)
        if self.limits.workspace_mode == 'hold':
            out[:] = last
            self.flag('workspace', 'tool would leave the box, holding previous command')
            return
        # Largest alpha in [0, 1] whose point is no worse than ``last`` (inside if last is).
        lo, hi = 0.0, 1.0
        for _ in range(self.BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            np.multiply(step, mid, out=out)
            out += last
            if self.box_violation(self.tool_position(out)) <= v_last + 1e-12:
                lo = mid
            else:
                hi = mid
        np.multiply(step, lo, out=out)
        out += last
        self.flag('workspace', f'tool would leave the box, step projected to {lo:.3f}')

    def filter_gripper(self, g: float) -> float:
        """Clamp the gripper opening into ``gripper_range``."""
        lo, hi = self.limits.gripper_range
        if not (lo <= g <= hi):
            if g != g:  # NaN: close is not always safe either; hold mid-range is worse.
                self.flag('gripper_range', 'non-finite gripper, clamped to lower bound')
                return lo
            c = min(max(g, lo), hi)
            self.flag('gripper_range', f'{g:.3f} -> {c:.3f}')
            return c
        return g

    def filter_twist(self, twist: np.ndarray, q: np.ndarray | None,
                     out: np.ndarray) -> np.ndarray:
        """Safe base-frame twist ``[vx vy vz wx wy wz]`` at measured joints ``q``, into ``out``."""
        lim = self.limits
        if not np.all(np.isfinite(twist)):
            self.flag('nonfinite', 'non-finite twist, zeroed')
            out[:] = 0.0
            return out
        out[:] = twist
        v, w = out[:3], out[3:6]
        s = float(np.sqrt(v @ v))
        if s > lim.max_linear_speed:
            v *= lim.max_linear_speed / s
            self.flag('linear_speed', f'{s:.3f} -> {lim.max_linear_speed} m/s')
        s = float(np.sqrt(w @ w))
        if s > lim.max_angular_speed:
            w *= lim.max_angular_speed / s
            self.flag('angular_speed', f'{s:.3f} -> {lim.max_angular_speed} rad/s')
        if self.has_workspace and q is None:
            v[:] = 0.0  # cannot tell where the tool is: no translation
            self.flag('workspace', 'no joint state, linear velocity zeroed')
        elif self.has_workspace:
            p = self.tool_position(q)
            nxt = p + v * self.period
            leaving = ((nxt > lim.workspace_max) & (v > 0)) | ((nxt < lim.workspace_min) & (v < 0))
            if leaving.any():
                v[leaving] = 0.0
                axes = ''.join('xyz'[i] for i in np.flatnonzero(leaving))
                self.flag('workspace', f'linear {axes} zeroed at box boundary')
        return out
