"""Arm kinematics with pinocchio, built from the robot's URDF (no second copy of the chain).

Only the arm joints move; gripper (and any other) joints are locked at zero. All poses are 4x4
homogeneous transforms of ``tool_frame`` expressed in ``base_frame``; twists are
``[vx, vy, vz, wx, wy, wz]`` of the tool origin in ``base_frame`` axes (the ``ee_delta`` action
convention of CONVENTIONS.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _pin():
    try:
        import pinocchio as pin
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise ImportError('roboalign_ros.control.kinematics needs pinocchio '
                          '(pip install pin)') from exc
    return pin


def pose_error(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """6-vector ``[dp, dtheta]`` taking ``current`` to ``target`` (both 4x4, same base frame).

    ``dp`` is the position difference, ``dtheta`` the rotation vector of
    ``R_target @ R_current.T`` (base-frame axes).
    """
    pin = _pin()
    dp = target[:3, 3] - current[:3, 3]
    dr = pin.log3(target[:3, :3] @ current[:3, :3].T)
    return np.concatenate([dp, dr])


class Kinematics:
    """Forward kinematics, Jacobian and damped-least-squares IK of the arm joints.

    ``Kinematics(spec)`` with a :class:`roboalign_ros.robot.RobotSpec`, or
    ``Kinematics.from_urdf(xml, arm_joints, base_frame, tool_frame, lower, upper, velocity)``.
    """

    def __init__(self, spec: Any, damping: float = 1e-2):
        self._init(spec.urdf_xml, tuple(spec.arm_joints), spec.base_frame, spec.tool_frame,
                   np.asarray(spec.lower, float), np.asarray(spec.upper, float),
                   np.asarray(spec.velocity, float), damping)

    @classmethod
    def from_urdf(cls, urdf_xml: str, arm_joints, base_frame: str, tool_frame: str,
                  lower=None, upper=None, velocity=None, damping: float = 1e-2) -> Kinematics:
        """Build without a RobotSpec; limits default to the URDF's."""
        self = cls.__new__(cls)
        self._init(urdf_xml, tuple(arm_joints), base_frame, tool_frame,
                   None if lower is None else np.asarray(lower, float),
                   None if upper is None else np.asarray(upper, float),
                   None if velocity is None else np.asarray(velocity, float), damping)
        return self

    def _init(self, urdf_xml, arm_joints, base_frame, tool_frame, lower, upper, velocity,
              damping):
        pin = _pin()
        full = pin.buildModelFromXML(urdf_xml)
        missing = [j for j in arm_joints if not full.existJointName(j)]
        if missing:
            raise ValueError(f'arm_joints: {missing} not in the URDF')
        lock = [full.getJointId(n) for n in full.names[1:] if n not in arm_joints]
        model = pin.buildReducedModel(full, lock, pin.neutral(full)) if lock else full
        # Reduced-model joint order follows the URDF tree; map it to the config order.
        idx = []
        for j in arm_joints:
            jid = model.getJointId(j)
            if model.joints[jid].nq != 1:
                raise ValueError(f'arm_joints: {j} is not a 1-DoF joint')
            idx.append(model.joints[jid].idx_q)
        self._perm = np.array(idx)  # config index i -> pinocchio q index
        for name, fr in (('base_frame', base_frame), ('tool_frame', tool_frame)):
            if not model.existFrame(fr):
                raise ValueError(f'{name}: frame {fr!r} not in the URDF')
        self.model = model
        self.data = model.createData()
        self.arm_joints = arm_joints
        self.n = len(arm_joints)
        self.base_frame, self.tool_frame = base_frame, tool_frame
        self._base_id = model.getFrameId(base_frame)
        self._tool_id = model.getFrameId(tool_frame)
        ml, mu = model.lowerPositionLimit[self._perm], model.upperPositionLimit[self._perm]
        mv = model.velocityLimit[self._perm]
        self.lower = ml.copy() if lower is None else np.maximum(lower, ml)
        self.upper = mu.copy() if upper is None else np.minimum(upper, mu)
        self.velocity = mv.copy() if velocity is None else np.minimum(velocity, mv)
        self.damping = float(damping)
        # base frame pose in the model's world (constant: the base is fixed)
        pin.framesForwardKinematics(model, self.data, pin.neutral(model))
        self._T_world_base = self.data.oMf[self._base_id].homogeneous.copy()
        self._R_base_world = self._T_world_base[:3, :3].T.copy()
        self._base_is_world = np.allclose(self._T_world_base, np.eye(4))
        self._qbuf = pin.neutral(model)

    # -- helpers --------------------------------------------------------------------------------

    def _q(self, q) -> np.ndarray:
        q = np.asarray(q, dtype=float)
        if q.shape != (self.n,):
            raise ValueError(f'q: expected shape ({self.n},), got {q.shape}')
        self._qbuf[self._perm] = q
        return self._qbuf

    def _to_base(self, T_world: np.ndarray) -> np.ndarray:
        if self._base_is_world:
            return T_world
        return np.linalg.solve(self._T_world_base, T_world)

    # -- public API ----------------------------------------------------------------------------

    def fk(self, q) -> np.ndarray:
        """4x4 pose of the tool frame in the base frame for arm joints ``q`` (config order)."""
        pin = _pin()
        pin.forwardKinematics(self.model, self.data, self._q(q))
        T = pin.updateFramePlacement(self.model, self.data, self._tool_id).homogeneous
        return self._to_base(T.copy())

    def fk_position(self, q) -> np.ndarray:
        """Tool position (3,) in the base frame (for workspace checks)."""
        return self.fk(q)[:3, 3]

    def frame_pose(self, q, frame: str) -> np.ndarray:
        """4x4 pose of any URDF frame in the base frame."""
        pin = _pin()
        if not self.model.existFrame(frame):
            raise ValueError(f'frame: {frame!r} not in the URDF')
        pin.forwardKinematics(self.model, self.data, self._q(q))
        T = pin.updateFramePlacement(self.model, self.data, self.model.getFrameId(frame))
        return self._to_base(T.homogeneous.copy())

    def jacobian(self, q) -> np.ndarray:
        """6xN Jacobian of the tool origin velocity ``[v; w]`` in base-frame axes."""
        pin = _pin()
        J = pin.computeFrameJacobian(self.model, self.data, self._q(q), self._tool_id,
                                     pin.LOCAL_WORLD_ALIGNED)[:, self._perm]
        if not self._base_is_world:
            R = self._R_base_world
            J = np.vstack([R @ J[:3], R @ J[3:]])
        return J

    def twist_to_joint_velocity(self, q, twist, dt: float | None = None,
                                damping: float | None = None) -> np.ndarray:
        """Damped-least-squares joint velocity realising ``twist`` (6,) at ``q``.

        Joints that would leave their position limits within ``dt`` (default 0.01 s) are frozen
        and the remaining ones re-solved; the result is scaled down uniformly to respect the
        velocity limits.
        """
        twist = np.asarray(twist, dtype=float)
        if twist.shape != (6,):
            raise ValueError(f'twist: expected shape (6,), got {twist.shape}')
        q = np.asarray(q, dtype=float)
        dt = 0.01 if dt is None else float(dt)
        lam = self.damping if damping is None else float(damping)
        J = self.jacobian(q)
        active = np.ones(self.n, dtype=bool)
        qd = np.zeros(self.n)
        for _ in range(3):
            Ja = J[:, active]
            qa = Ja.T @ np.linalg.solve(Ja @ Ja.T + (lam ** 2) * np.eye(6), twist)
            qd[:] = 0.0
            qd[active] = qa
            q_next = q + qd * dt
            blocked = active & (((q_next > self.upper) & (qd > 0)) |
                                ((q_next < self.lower) & (qd < 0)))
            if not blocked.any():
                break
            active &= ~blocked
            if not active.any():
                qd[:] = 0.0
                break
        scale = np.max(np.abs(qd) / self.velocity) if self.n else 0.0
        if scale > 1.0:
            qd /= scale
        return qd

    def ik_step(self, q, target_pose, gain: float = 1.0, max_step: float = 0.1,
                damping: float | None = None) -> np.ndarray:
        """One damped-least-squares step from ``q`` towards ``target_pose`` (4x4, base frame).

        Returns new joint values clipped to the limits; each joint moves at most ``max_step``
        (rad or m). Iterate it (see :meth:`solve_ik`) for a full solve.
        """
        q = np.asarray(q, dtype=float)
        target_pose = np.asarray(target_pose, dtype=float)
        if target_pose.shape != (4, 4):
            raise ValueError(f'target_pose: expected a 4x4 matrix, got {target_pose.shape}')
        err = pose_error(self.fk(q), target_pose)
        lam = self.damping if damping is None else float(damping)
        J = self.jacobian(q)
        dq = J.T @ np.linalg.solve(J @ J.T + (lam ** 2) * np.eye(6), gain * err)
        m = np.max(np.abs(dq))
        if m > max_step:
            dq *= max_step / m
        return np.clip(q + dq, self.lower, self.upper)

    def solve_ik(self, q0, target_pose, iters: int = 50, tol: float = 1e-4,
                 max_step: float = 0.2) -> tuple[np.ndarray, bool]:
        """Iterate :meth:`ik_step` from ``q0``; return ``(q, converged)``."""
        q = np.asarray(q0, dtype=float).copy()
        for _ in range(iters):
            q = self.ik_step(q, target_pose, max_step=max_step)
            if np.linalg.norm(pose_error(self.fk(q), target_pose)) < tol:
                return q, True
        return q, False
