"""Generated URDF files: the low-poly longer-finger Panda and the play-table scene.

Files are written once per content hash into a cache folder (``$DIWA_JAX_CACHE`` or
``~/.cache/diwa_jax``) with atomic renames, so concurrent processes can share them.

The Panda is derived from ``pybullet_data/franka_panda/panda.urdf`` (Apache-2.0; its LICENSE.txt is
copied beside the derived file). Changes: visual meshes are the low-poly collision meshes (material
libraries stripped, colours set at run time), the fingers are stretched 1.5x along their length so the
fingertips reach 0.14 m below the hand like CALVIN's longer-finger Panda, their soft contact
stiffness/damping is removed (rigid contacts), and two fixed frames are
added: ``tcp`` 0.14 m below ``panda_hand`` and ``gripper_cam`` (``calvin_conventions.md`` section 5).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pybullet_data

PANDA_DIR = Path(pybullet_data.getDataPath()) / "franka_panda"
TCP_OFFSET = 0.14  # m below panda_hand, CALVIN's longer-finger TCP
FINGER_STRETCH = 1.5  # stock finger 0.054 m -> 0.081 m: tips at 0.0584 + 0.081 = 0.139 m below the hand
GRIPPER_CAM_XYZ = (-0.1, 0.0, 0.0)
GRIPPER_CAM_RPY = (1.3, 0.0, -1.57)


def cache_dir() -> Path:
    root = os.environ.get("DIWA_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "diwa_jax")
    path = Path(root) / "playtable"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_atomic(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _hashed_dir(name: str, content: str) -> Path:
    digest = hashlib.sha1(content.encode()).hexdigest()[:12]
    path = cache_dir() / f"{name}-{digest}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- Panda ----------------------------------------------------------------------------------------


def _strip_materials(obj_text: str) -> str:
    return "".join(line for line in obj_text.splitlines(keepends=True) if not line.startswith(("mtllib", "usemtl")))


def _panda_urdf_text(visual_dir: Path) -> str:
    text = (PANDA_DIR / "panda.urdf").read_text()
    collision_dir = PANDA_DIR / "meshes" / "collision"

    # Visuals become the stripped low-poly copies; collisions keep pybullet_data's meshes.
    text = re.sub(
        r'(<visual>.*?<mesh filename=")package://meshes/(?:visual|collision)/(\w+\.obj)"',
        lambda m: f'{m.group(1)}{visual_dir / m.group(2)}"',
        text,
        flags=re.S,
    )
    text = text.replace('filename="package://meshes/collision/', f'filename="{collision_dir}/')
    text = text.replace(
        f'{visual_dir / "finger.obj"}"', f'{visual_dir / "finger.obj"}" scale="1 1 {FINGER_STRETCH}"'
    ).replace(f'{collision_dir}/finger.obj"', f'{collision_dir}/finger.obj" scale="1 1 {FINGER_STRETCH}"')
    extra_frames = f"""
  <link name="tcp"><inertial><mass value="0"/><inertia ixx="0" ixy="0" ixz="0" iyy="0" iyz="0" izz="0"/></inertial></link>
  <joint name="panda_hand_tcp" type="fixed">
    <parent link="panda_hand"/>
    <child link="tcp"/>
    <origin rpy="0 0 0" xyz="0 0 {TCP_OFFSET}"/>
  </joint>
  <link name="gripper_cam"><inertial><mass value="0"/><inertia ixx="0" ixy="0" ixz="0" iyy="0" iyz="0" izz="0"/></inertial></link>
  <joint name="panda_hand_gripper_cam" type="fixed">
    <parent link="panda_hand"/>
    <child link="gripper_cam"/>
    <origin rpy="{' '.join(map(str, GRIPPER_CAM_RPY))}" xyz="{' '.join(map(str, GRIPPER_CAM_XYZ))}"/>
  </joint>
</robot>"""
    notice = (
        "<!-- Derived from pybullet_data/franka_panda/panda.urdf, Apache License 2.0 (LICENSE.txt in this\n"
        "     folder). Modified by diwa_jax: low-poly visuals, fingers stretched 1.5x with rigid contacts,\n"
        "     tcp and gripper_cam frames added. -->\n"
    )
    # The stock fingers have soft contacts (stiffness 3e4 N/m) that let a pressing arm sink 2 cm into
    # the table; rigid contacts keep fingertips on surfaces.
    text = re.sub(r"\s*<stiffness value=\"[0-9.]+\"/>\s*<damping value=\"[0-9.]+\"/>", "", text)
    text = text.replace("</robot>", extra_frames)
    return text.replace('<robot name="panda"', notice + '<robot name="panda"', 1)


def panda_urdf() -> Path:
    """Path of the derived low-poly longer-finger Panda URDF (generated on first use)."""
    collision_dir = PANDA_DIR / "meshes" / "collision"
    meshes = {p.name: _strip_materials(p.read_text()) for p in sorted(collision_dir.glob("*.obj"))}
    placeholder = "@VISUAL_DIR@"
    template = _panda_urdf_text(Path(placeholder))
    folder = _hashed_dir("panda", "".join(meshes.values()) + template)
    visual_dir = folder / "visual"
    visual_dir.mkdir(exist_ok=True)
    for name, text in meshes.items():
        _write_atomic(visual_dir / name, text)
    license_path = folder / "LICENSE.txt"
    if not license_path.exists():
        shutil.copyfile(PANDA_DIR / "LICENSE.txt", license_path)
    urdf = folder / "panda_low_poly.urdf"
    _write_atomic(urdf, template.replace(placeholder, str(visual_dir)))
    return urdf


# ---- generic URDF writer for the scene -------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A box (size = full extents), cylinder (size = (radius, length)) or sphere (size = (radius,)).

    ``center`` is in world coordinates at joint position 0; ``collide`` False makes it visual-only.
    """

    kind: str
    center: tuple[float, float, float]
    size: tuple[float, ...]
    rgba: tuple[float, float, float, float]
    collide: bool = True


def box(lo, hi, rgba, collide=True) -> Shape:
    """Axis-aligned box from its min and max corners (world, m)."""
    center = tuple(0.5 * (a + b) for a, b in zip(lo, hi))
    size = tuple(b - a for a, b in zip(lo, hi))
    return Shape("box", center, size, rgba, collide)


@dataclass(frozen=True)
class Link:
    name: str
    shapes: tuple[Shape, ...]
    mass: float = 0.0
    joint: str = "fixed"  # root (the first link) | fixed | prismatic
    parent: str = "desk"
    joint_name: str = ""
    axis: tuple[float, float, float] = (1.0, 0.0, 0.0)
    limits: tuple[float, float] = (0.0, 0.0)


def _fmt(values) -> str:
    return " ".join(f"{v:.6g}" for v in values)


def _geometry(shape: Shape) -> str:
    if shape.kind == "box":
        return f'<box size="{_fmt(shape.size)}"/>'
    if shape.kind == "cylinder":
        return f'<cylinder radius="{shape.size[0]:.6g}" length="{shape.size[1]:.6g}"/>'
    if shape.kind == "sphere":
        return f'<sphere radius="{shape.size[0]:.6g}"/>'
    raise ValueError(f"unknown shape kind {shape.kind!r}")


def _half_extents(shape: Shape) -> tuple[float, float, float]:
    if shape.kind == "box":
        return tuple(0.5 * v for v in shape.size)
    radius = shape.size[0]
    return (radius, radius, 0.5 * shape.size[1] if shape.kind == "cylinder" else radius)


def _link_xml(link: Link) -> str:
    parts = [f'  <link name="{link.name}">']
    if link.mass == 0:
        parts.append('    <inertial><mass value="0"/><inertia ixx="0" iyy="0" izz="0" ixy="0" ixz="0" iyz="0"/></inertial>')
    else:
        # Inertia of the bounding box of all shapes, centred on it; good enough for sliding parts.
        lo = [min(s.center[i] - _half_extents(s)[i] for s in link.shapes) for i in range(3)]
        hi = [max(s.center[i] + _half_extents(s)[i] for s in link.shapes) for i in range(3)]
        c = [0.5 * (a + b) for a, b in zip(lo, hi)]
        e = [b - a for a, b in zip(lo, hi)]
        m = link.mass
        ixx, iyy, izz = (m / 12 * (e[1] ** 2 + e[2] ** 2), m / 12 * (e[0] ** 2 + e[2] ** 2), m / 12 * (e[0] ** 2 + e[1] ** 2))
        parts.append(
            f'    <inertial><origin xyz="{_fmt(c)}"/><mass value="{m:.6g}"/>'
            f'<inertia ixx="{ixx:.6g}" iyy="{iyy:.6g}" izz="{izz:.6g}" ixy="0" ixz="0" iyz="0"/></inertial>'
        )
    for i, s in enumerate(link.shapes):
        parts.append(
            f'    <visual><origin xyz="{_fmt(s.center)}"/><geometry>{_geometry(s)}</geometry>'
            f'<material name="{link.name}_{i}"><color rgba="{_fmt(s.rgba)}"/></material></visual>'
        )
        if s.collide:
            parts.append(f'    <collision><origin xyz="{_fmt(s.center)}"/><geometry>{_geometry(s)}</geometry></collision>')
    parts.append("  </link>")
    if link.joint != "root":
        parts.append(f'  <joint name="{link.joint_name or link.name + "_joint"}" type="{link.joint}">')
        parts.append(f'    <parent link="{link.parent}"/><child link="{link.name}"/>')
        parts.append('    <origin xyz="0 0 0"/>')
        if link.joint == "prismatic":
            parts.append(f'    <axis xyz="{_fmt(link.axis)}"/>')
            parts.append(f'    <limit lower="{link.limits[0]:.6g}" upper="{link.limits[1]:.6g}" effort="1000" velocity="10"/>')
        parts.append("  </joint>")
    return "\n".join(parts)


def write_urdf(name: str, links: tuple[Link, ...]) -> Path:
    """Write a URDF whose first link is the root; returns its cached path."""
    body = "\n".join(_link_xml(link) for link in links)
    text = f'<?xml version="1.0"?>\n<!-- generated by diwa_jax.envs.playtable -->\n<robot name="{name}">\n{body}\n</robot>\n'
    path = _hashed_dir(name, text) / f"{name}.urdf"
    _write_atomic(path, text)
    return path
