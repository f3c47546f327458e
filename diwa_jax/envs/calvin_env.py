"""Optional adapter to a user-installed ``calvin_env`` (CALVIN's own pybullet simulator).

``calvin_env`` is not on PyPI and is never vendored here (see ``calvin_conventions.md`` sections 8-9);
it is imported lazily, so this module imports without it. The adapter presents the same interface as
the embedded play-table: ``reset(robot_obs=None, scene_obs=None) -> obs``, ``step(rel_action) ->
(obs, info)``, ``close()``, with flat observations {rgb_static, rgb_gripper, robot_obs, scene_obs}.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from diwa_jax.envs import protocol as P

INSTALL_HINT = (
    "calvin_env is not installed (backend 'calvin_env'). It is not on PyPI, and PyPI's 'calvin' is an "
    "unrelated package: never `pip install calvin`. Install it from a recursive clone:\n"
    "  git clone --recursive https://github.com/mees/calvin_env.git && pip install -e calvin_env\n"
    "and its PyPI dependencies with `pip install diwa-jax[calvin]`. "
    "Or use the embedded simulator: --config.env.backend=playtable."
)
EXTRA_HINT = "calvin_env needs its PyPI dependencies: `pip install diwa-jax[calvin]`"
CONFIG_NAME = "config_data_collection"
SWITCH, LIGHTBULB = 3, 4  # scene_obs indices: switch joint (m), lightbulb logical state
SWITCH_ON, SWITCH_THRESHOLD = 0.088, 0.044  # the bulb is on while the switch joint is above the threshold


def _import(name: str, hint: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(f"cannot import {name} ({e}).\n{hint}") from e


def consistent_scene_obs(scene_obs: np.ndarray | None) -> np.ndarray | None:
    """Puts the switch joint on the side of the threshold that matches the lightbulb.

    The bulb follows the switch at every scene update, so an inconsistent pair would flip the bulb on
    the first step. As CALVIN's evaluation does, a lit bulb gets the switch fully up (0.088); an unlit
    bulb with the switch above the threshold gets it down (0).
    """
    if scene_obs is None:
        return None
    scene_obs = np.array(scene_obs, np.float64)
    if scene_obs[LIGHTBULB] >= 0.5:
        scene_obs[SWITCH] = SWITCH_ON
    elif scene_obs[SWITCH] > SWITCH_THRESHOLD:
        scene_obs[SWITCH] = 0.0
    return scene_obs


def binarize_gripper(rel_action: np.ndarray) -> np.ndarray:
    """7-D relative action with the gripper set to exactly +1 (>= 0, open) or -1 (close), as calvin_env asserts."""
    action = np.array(rel_action, np.float64).reshape(-1)
    if action.shape != (7,):
        raise ValueError(f"CalvinEnvAdapter.step: expected a 7-D relative action, got shape {np.shape(rel_action)}")
    action[6] = P.policy_gripper(action[6])
    return action


def flatten_obs(obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """calvin_env's nested observation -> {rgb_static, rgb_gripper, robot_obs, scene_obs}."""
    try:
        rgb = obs["rgb_obs"]
        return {
            "rgb_static": np.asarray(rgb["rgb_static"], np.uint8),
            "rgb_gripper": np.asarray(rgb["rgb_gripper"], np.uint8),
            "robot_obs": np.asarray(obs["robot_obs"], np.float64),
            "scene_obs": np.asarray(obs["scene_obs"], np.float64),
        }
    except KeyError as e:
        raise KeyError(f"calvin_env observation lacks {e}; has {sorted(obs)} (static and gripper cameras expected)") from e


def calvin_env_overrides(use_egl: bool) -> list[str]:
    """Hydra overrides for ``config_data_collection`` (calvin_conventions.md section 8.2)."""
    overrides = [
        "cameras=static_and_gripper",  # never the tactile camera: it needs the tacto submodule
        "scene=calvin_scene_D",
        "robot=panda_longer_finger",
        "use_vr=false",
        f"env.use_egl={'true' if use_egl else 'false'}",
        "env.use_scene_info=true",
    ]
    if not _installed("hydra_plugins.hydra_colorlog"):
        # The config asks for colorlog job logging; without hydra-colorlog composing it fails.
        overrides += ["hydra/job_logging=default", "hydra/hydra_logging=default"]
    return overrides


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def _in_git_checkout(path: Path) -> bool:
    return any((p / ".git").exists() for p in (path, *path.parents))


@contextlib.contextmanager
def _constant_git_hash(module: Any, package_dir: Path) -> Iterator[None]:
    """Outside a git checkout calvin_env's constructor fails looking up its commit hash; while the
    env is built, the lookup functions of ``module`` return a constant (calvin_env's files stay untouched)."""
    names = [] if _in_git_checkout(package_dir) else [
        n for n in dir(module) if "git" in n.lower() and "hash" in n.lower() and callable(getattr(module, n))]
    saved = {n: getattr(module, n) for n in names}
    try:
        for n in names:
            setattr(module, n, lambda *args, **kwargs: "not-a-git-checkout")
        yield
    finally:
        for n, fn in saved.items():
            setattr(module, n, fn)


def compose_env_config(conf_dir: Path, use_egl: bool) -> Any:
    """Composes calvin_env's ``config_data_collection`` with :func:`calvin_env_overrides`."""
    hydra = _import("hydra", EXTRA_HINT)
    global_hydra = _import("hydra.core.global_hydra", EXTRA_HINT).GlobalHydra.instance()
    if global_hydra.is_initialized():
        global_hydra.clear()
    with hydra.initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return hydra.compose(config_name=CONFIG_NAME, overrides=calvin_env_overrides(use_egl))


class CalvinEnvAdapter:
    """The real CALVIN simulator behind the embedded play-table's interface.

    ``conf_dir``: calvin_env's ``conf`` folder (default: the one beside the installed package).
    ``use_egl``: EGL rendering (GPU/headless) or pybullet's TinyRenderer.
    """

    def __init__(self, conf_dir: str | Path | None = None, use_egl: bool = True, seed: int = 0):
        package = _import("calvin_env", INSTALL_HINT)
        if getattr(package, "__file__", None) is None:
            raise ImportError(f"calvin_env imports as an empty namespace package (an empty clone?).\n{INSTALL_HINT}")
        package_dir = Path(package.__file__).resolve().parent
        play_table_env = _import("calvin_env.envs.play_table_env", INSTALL_HINT)
        conf_dir = Path(conf_dir) if conf_dir else package_dir.parent / "conf"
        if not (conf_dir / f"{CONFIG_NAME}.yaml").exists():
            raise FileNotFoundError(
                f"{conf_dir}: no {CONFIG_NAME}.yaml; pass calvin_env's conf folder "
                "(--config.env.calvin_env_conf_dir=/path/to/calvin_env/conf)")
        cfg = compose_env_config(conf_dir, use_egl)
        instantiate = _import("hydra.utils", EXTRA_HINT).instantiate
        with _constant_git_hash(play_table_env, package_dir):
            self._env = instantiate(cfg.env, seed=seed, _recursive_=False)

    def reset(self, robot_obs: np.ndarray | None = None, scene_obs: np.ndarray | None = None) -> dict[str, np.ndarray]:
        robot_obs = None if robot_obs is None else np.asarray(robot_obs, np.float64)
        return flatten_obs(self._env.reset(robot_obs=robot_obs, scene_obs=consistent_scene_obs(scene_obs)))

    def step(self, rel_action: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
        obs, _, _, info = self._env.step(binarize_gripper(rel_action))
        return flatten_obs(obs), info

    def close(self) -> None:
        self._env.close()
