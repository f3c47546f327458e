"""The Franka Panda: IK to joint position control, gripper, ``robot_obs`` (``calvin_conventions.md`` 4, 7).

Base pose: (-0.34, -0.46, 0.24), no rotation. With the ``tcp`` frame 0.14 m below ``panda_hand``
(longer fingers, see assets.py), CALVIN's neutral joints then give CALVIN's neutral TCP
(0.0259, -0.2313, 0.5713), Euler (3.090, -0.029, 1.500).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from diwa_jax.envs import protocol as P
from diwa_jax.envs.playtable.assets import panda_urdf
from diwa_jax.envs.playtable.scene import ROBOT_BASE_POS

ARM_LOWER = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
ARM_UPPER = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
ARM_FORCE = 200.0
ARM_MAX_VELOCITY = 2.0
FINGER_OPEN = 0.04  # per finger; width = sum of both
GRIPPER_OPEN_FORCE = 2.0
GRIPPER_CLOSE_FORCE = 200.0
GRIPPER_MAX_VELOCITY = 1.0
IK_PLACEHOLDER_LIMIT = 7.0  # wide limits in null-space IK, the solution is clipped afterwards
NEUTRAL_JOINTS = np.asarray(P.NEUTRAL_ROBOT_OBS[P.ARM_JOINTS])

ARM_LINK_RGBA = (0.93, 0.93, 0.93, 1.0)
HAND_RGBA = (0.22, 0.22, 0.24, 1.0)


class Panda:
    """The arm inside one bullet client. Holds the commanded target pose that relative actions move."""

    def __init__(self, client, base_pos=ROBOT_BASE_POS):
        self._p = p = client
        self.body = p.loadURDF(str(panda_urdf()), list(base_pos), useFixedBase=True, flags=p.URDF_ENABLE_CACHED_GRAPHICS_SHAPES)
        info = [p.getJointInfo(self.body, j) for j in range(p.getNumJoints(self.body))]
        joints = {i[1].decode(): i[0] for i in info}
        links = {i[12].decode(): i[0] for i in info}
        self.arm = [joints[f"panda_joint{k}"] for k in range(1, 8)]
        self.fingers = [joints["panda_finger_joint1"], joints["panda_finger_joint2"]]
        self.tcp_link = links["tcp"]
        self.camera_link = links["gripper_cam"]
        self._num_dofs = sum(1 for i in info if i[2] != p.JOINT_FIXED)
        gear = p.createConstraint(self.body, self.fingers[0], self.body, self.fingers[1], p.JOINT_GEAR, [1, 0, 0], [0, 0, 0], [0, 0, 0])
        p.changeConstraint(gear, gearRatio=-1, erp=0.1, maxForce=50)
        for link in range(-1, p.getNumJoints(self.body)):
            hand_part = link in (links["panda_hand"], *self.fingers)
            p.changeVisualShape(self.body, link, rgbaColor=HAND_RGBA if hand_part else ARM_LINK_RGBA)
        # IK arguments over all movable joints (arm + fingers); rest pose = the initial (neutral) joints.
        self._ik_lower = [-IK_PLACEHOLDER_LIMIT] * self._num_dofs
        self._ik_upper = [IK_PLACEHOLDER_LIMIT] * self._num_dofs
        self._ik_ranges = [IK_PLACEHOLDER_LIMIT] * self._num_dofs
        self._ik_rest = list(NEUTRAL_JOINTS) + [FINGER_OPEN] * (self._num_dofs - 7)
        self.target_pos = np.zeros(3)
        self.target_orn = np.zeros(3)
        self.gripper_action = 1.0

    def reset(self, robot_obs: np.ndarray) -> None:
        """Set the arm joints and finger width of ``robot_obs``; the target resyncs with the measured TCP."""
        p, r = self._p, np.asarray(robot_obs, dtype=np.float64)
        if r.shape != (P.ROBOT_OBS_DIM,):
            raise ValueError(f"robot_obs must have shape ({P.ROBOT_OBS_DIM},), got {r.shape}")
        for joint, q in zip(self.arm, r[P.ARM_JOINTS]):
            p.resetJointState(self.body, joint, float(q), targetVelocity=0.0)
        for joint in self.fingers:
            p.resetJointState(self.body, joint, float(r[P.GRIPPER_WIDTH]) / 2, targetVelocity=0.0)
        self.gripper_action = float(P.binarize_gripper(r[P.GRIPPER_ACTION]))
        self._drive_arm(r[P.ARM_JOINTS])
        self._drive_gripper()
        pos, orn = self.tcp_pose()
        self.target_pos, self.target_orn = pos, orn

    def apply(self, rel_action: np.ndarray) -> None:
        """Move the commanded target by a relative action and set the motor targets (IK)."""
        rel = np.clip(rel_action[:6], -1.0, 1.0)
        self.target_pos = self.target_pos + rel[:3] * P.MAX_POS
        self.target_orn = self.target_orn + rel[3:6] * P.MAX_ORN  # component-wise, no wrapping
        self.gripper_action = float(rel_action[6])
        p = self._p
        solution = p.calculateInverseKinematics(
            self.body,
            self.tcp_link,
            self.target_pos.tolist(),
            p.getQuaternionFromEuler(self.target_orn.tolist()),
            lowerLimits=self._ik_lower,
            upperLimits=self._ik_upper,
            jointRanges=self._ik_ranges,
            restPoses=self._ik_rest,
        )
        self._drive_arm(np.clip(solution[:7], ARM_LOWER, ARM_UPPER))
        self._drive_gripper()

    def _drive_arm(self, joints: np.ndarray) -> None:
        p = self._p
        for joint, q in zip(self.arm, joints):
            p.setJointMotorControl2(self.body, joint, p.POSITION_CONTROL, targetPosition=float(q), force=ARM_FORCE, maxVelocity=ARM_MAX_VELOCITY)

    def _drive_gripper(self) -> None:
        p = self._p
        opened = self.gripper_action > 0
        for joint in self.fingers:
            p.setJointMotorControl2(
                self.body,
                joint,
                p.POSITION_CONTROL,
                targetPosition=FINGER_OPEN if opened else 0.0,
                force=GRIPPER_OPEN_FORCE if opened else GRIPPER_CLOSE_FORCE,
                maxVelocity=GRIPPER_MAX_VELOCITY,
            )

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Measured TCP position and Euler xyz (pybullet's quaternion -> Euler)."""
        state = self._p.getLinkState(self.body, self.tcp_link, computeForwardKinematics=True)
        return np.asarray(state[4], dtype=np.float64), np.asarray(self._p.getEulerFromQuaternion(state[5]), dtype=np.float64)

    def camera_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """World position and 3x3 rotation of the ``gripper_cam`` frame."""
        state = self._p.getLinkState(self.body, self.camera_link, computeForwardKinematics=True)
        return np.asarray(state[4]), np.asarray(self._p.getMatrixFromQuaternion(state[5])).reshape(3, 3)

    def robot_obs(self) -> np.ndarray:
        pos, orn = self.tcp_pose()
        states = self._p.getJointStates(self.body, self.arm + self.fingers)
        q = np.array([s[0] for s in states], dtype=np.float64)
        return np.concatenate([pos, orn, [q[7] + q[8]], q[:7], [self.gripper_action]])


# ---- forward kinematics in NumPy (no simulator) -------------------------------------------------------


def _rpy_matrix(rpy) -> np.ndarray:
    r, p, y = rpy
    rx = np.array([[1, 0, 0], [0, np.cos(r), -np.sin(r)], [0, np.sin(r), np.cos(r)]])
    ry = np.array([[np.cos(p), 0, np.sin(p)], [0, 1, 0], [-np.sin(p), 0, np.cos(p)]])
    rz = np.array([[np.cos(y), -np.sin(y), 0], [np.sin(y), np.cos(y), 0], [0, 0, 1]])
    return rz @ ry @ rx


def euler_from_matrix(rot: np.ndarray) -> np.ndarray:
    """Euler xyz (roll, pitch, yaw) with rot = Rz(yaw) Ry(pitch) Rx(roll), pybullet's convention."""
    pitch = np.arcsin(np.clip(-rot[2, 0], -1.0, 1.0))
    return np.array([np.arctan2(rot[2, 1], rot[2, 2]), pitch, np.arctan2(rot[1, 0], rot[0, 0])])


class PandaKinematics:
    """TCP forward kinematics read from the generated URDF's joint chain (base -> tcp)."""

    def __init__(self, urdf: Path | None = None, base_pos=ROBOT_BASE_POS):
        root = ET.parse(str(urdf or panda_urdf())).getroot()
        by_child = {j.find("child").get("link"): j for j in root.findall("joint")}
        chain, link = [], "tcp"
        while link in by_child:
            joint = by_child[link]
            origin = joint.find("origin")
            xyz = np.array([float(v) for v in origin.get("xyz", "0 0 0").split()])
            rpy = [float(v) for v in origin.get("rpy", "0 0 0").split()]
            chain.append((xyz, _rpy_matrix(rpy), joint.get("type") == "revolute"))
            link = joint.find("parent").get("link")
        self._chain = chain[::-1]
        self._base = np.asarray(base_pos, dtype=np.float64)
        if sum(rev for _, _, rev in self._chain) != 7:
            raise ValueError("the Panda URDF chain to `tcp` must have 7 revolute joints")

    def tcp_pose(self, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP position and Euler xyz for 7 arm joint angles."""
        pos, rot, k = self._base.copy(), np.eye(3), 0
        for xyz, fixed_rot, revolute in self._chain:
            pos = pos + rot @ xyz
            rot = rot @ fixed_rot
            if revolute:
                rot = rot @ _rpy_matrix((0.0, 0.0, joints[k]))
                k += 1
        return pos, euler_from_matrix(rot)
