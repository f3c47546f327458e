"""Optional adapter to a user-installed ``calvin_env`` (CALVIN's own pybullet simulator).

``calvin_env`` is not on PyPI and is never vendored here (see ``calvin_conventions.md`` sections 8-9);
it is imported lazily, so this module imports without it. The adapter presents the same interface as
the embedded play-table: ``reset(robot_obs=None, scene_obs=None) -> obs``, ``step(rel_action) ->
(obs, info)``, ``get_info()``, ``close()``, with flat observations {rgb_static, rgb_gripper, robot_obs,
scene_obs} and ``info`` holding calvin_env's ``robot_info``/``scene_info`` plus ``robot_obs``/``scene_obs``.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from diwa_jax.envs import protocol as P
from diwa_jax.envs.geometry import CALVIN_SCENE_D

INSTALL_HINT = (
    "calvin_env is not installed (backend 'calvin_env'). It is not on PyPI, and PyPI's 'calvin' is an "
    "unrelated package: never `pip install calvin`. Install its PyPI dependencies, then calvin_env itself "
    "from a clone with --no-deps (its own requirements add the non-headless opencv-python; its tacto "
    "submodule is not needed):\n"
    "  pip install diwa-jax[calvin] && git clone https://github.com/mees/calvin_env.git "
    "&& pip install --no-deps -e calvin_env\n"
    "Or use the embedded simulator: --config.env.backend=playtable."
)
EXTRA_HINT = "calvin_env needs its PyPI dependencies: `pip install diwa-jax[calvin]`"
CONFIG_NAME = "config_data_collection"
SWITCH_ON = P.SWITCH_RANGE[1]  # CALVIN's evaluation puts the switch fully up under a lit bulb
LIGHT_ON_ABOVE = 0.5  # the project's oracle reads a light state above 0.5 as on
# The sizes of calvin_env's camera configs (conf/cameras/cameras/{static,gripper}.yaml), those of CALVIN's data.
STATIC_SIZE, GRIPPER_SIZE = 200, 84


def _import(name: str, hint: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(f"cannot import {name} ({e}).\n{hint}") from e


def consistent_scene_obs(scene_obs: np.ndarray | None) -> np.ndarray | None:
    """A copy of ``scene_obs`` that calvin_env accepts and keeps: lights as exactly 0/1, the switch on
    the lightbulb's side of its threshold.

    calvin_env raises on a light state other than 0 or 1, so the bulb and the LED are read as the
    oracle reads them (on above 0.5). The bulb follows the switch at every scene update, so an
    inconsistent pair would flip the bulb on the first step: as CALVIN's evaluation does, a lit bulb
    gets the switch fully up (0.088); an unlit bulb with the switch above the threshold gets it down (0).
    """
    if scene_obs is None:
        return None
    scene_obs = np.array(scene_obs, np.float64)
    lights = [P.LIGHTBULB, P.LED]
    scene_obs[lights] = (scene_obs[lights] > LIGHT_ON_ABOVE).astype(np.float64)
    if scene_obs[P.LIGHTBULB]:
        scene_obs[P.SWITCH] = SWITCH_ON
    elif scene_obs[P.SWITCH] > P.SWITCH_TRIGGER:
        scene_obs[P.SWITCH] = 0.0
    return scene_obs


def calvin_action(rel_action: np.ndarray) -> np.ndarray:
    """The 7-D relative action as the embedded play-table executes it: motion parts clipped to [-1, 1]
    (calvin_env scales without clipping), gripper exactly +1 (>= 0, open) or -1 (close), as calvin_env asserts."""
    action = np.array(rel_action, np.float64).reshape(-1)
    if action.shape != (P.ACTION_DIM,):
        raise ValueError(f"CalvinEnvAdapter.step: expected a 7-D relative action, got shape {np.shape(rel_action)}")
    if not np.all(np.isfinite(action)):
        raise ValueError(f"CalvinEnvAdapter.step: the action must be finite, got {action!r}")
    action[:6] = np.clip(action[:6], -1.0, 1.0)
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


def with_state(info: Mapping[str, Any], obs: Mapping[str, Any]) -> dict:
    """calvin_env's info plus float64 copies of the state vectors, the keys the play-table's info has."""
    return {**info, P.ROBOT_OBS: np.array(obs[P.ROBOT_OBS], np.float64),
            P.SCENE_OBS: np.array(obs[P.SCENE_OBS], np.float64)}


def calvin_env_overrides(use_egl: bool, static_size: int = STATIC_SIZE, gripper_size: int = GRIPPER_SIZE) -> list[str]:
    """Hydra overrides for ``config_data_collection`` (calvin_conventions.md section 8.2); the cameras render
    square images of the given sizes (the same intrinsics otherwise)."""
    overrides = [
        "cameras=static_and_gripper",  # never the tactile camera: it needs the tacto submodule
        "scene=calvin_scene_D",
        "robot=panda_longer_finger",
        "use_vr=false",
        f"env.use_egl={'true' if use_egl else 'false'}",
        "env.use_scene_info=true",
        f"++cameras.static.width={static_size}", f"++cameras.static.height={static_size}",
        f"++cameras.gripper.width={gripper_size}", f"++cameras.gripper.height={gripper_size}",
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


def _own_git_checkout(package_dir: Path) -> bool:
    """Whether the package lies in calvin_env's own clone (or submodule). Not any enclosing checkout:
    GitPython would report that one's commit, e.g. a copy extracted under the project's ``.venv``."""
    return (package_dir.parent / ".git").exists()


@contextlib.contextmanager
def _constant_git_hash(module: Any, package_dir: Path) -> Iterator[None]:
    """Outside its own git checkout calvin_env's constructor fails looking up its commit hash; while the
    env is built, the lookup functions of ``module`` return a constant (calvin_env's files stay untouched)."""
    names = [] if _own_git_checkout(package_dir) else [
        n for n in dir(module) if "git" in n.lower() and "hash" in n.lower() and callable(getattr(module, n))]
    saved = {n: getattr(module, n) for n in names}
    try:
        for n in names:
            setattr(module, n, lambda *args, **kwargs: "not-a-git-checkout")
        yield
    finally:
        for n, fn in saved.items():
            setattr(module, n, fn)


def _closed() -> None:
    """What a closed calvin_env does on ``close()``: nothing."""


def compose_env_config(conf_dir: Path, use_egl: bool, static_size: int = STATIC_SIZE,
                       gripper_size: int = GRIPPER_SIZE) -> Any:
    """Composes calvin_env's ``config_data_collection`` with :func:`calvin_env_overrides`."""
    hydra = _import("hydra", EXTRA_HINT)
    global_hydra = _import("hydra.core.global_hydra", EXTRA_HINT).GlobalHydra.instance()
    if global_hydra.is_initialized():
        global_hydra.clear()
    with hydra.initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return hydra.compose(config_name=CONFIG_NAME, overrides=calvin_env_overrides(use_egl, static_size, gripper_size))


class CalvinEnvAdapter:
    """The real CALVIN simulator behind the embedded play-table's interface.

    ``conf_dir``: calvin_env's ``conf`` folder (default: the one beside the installed package).
    ``use_egl``: EGL rendering (GPU/headless) or pybullet's TinyRenderer.
    ``static_size``, ``gripper_size``: the cameras' square image sizes (CALVIN's data: 200 and 84).
    """

    geometry = CALVIN_SCENE_D

    def __init__(self, conf_dir: str | Path | None = None, use_egl: bool = True, seed: int = 0,
                 static_size: int = STATIC_SIZE, gripper_size: int = GRIPPER_SIZE):
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
        cfg = compose_env_config(conf_dir, use_egl, static_size, gripper_size)
        instantiate = _import("hydra.utils", EXTRA_HINT).instantiate
        with _constant_git_hash(play_table_env, package_dir):
            self._env = instantiate(cfg.env, seed=seed, _recursive_=False)

    @property
    def target_pose(self) -> np.ndarray:
        """The commanded TCP target that relative actions move, (6,) xyz + Euler."""
        robot = self._env.robot
        return np.concatenate([robot.target_pos, robot.target_orn]).astype(np.float64)

    def reset(self, robot_obs: np.ndarray | None = None, scene_obs: np.ndarray | None = None) -> dict[str, np.ndarray]:
        robot_obs = None if robot_obs is None else np.asarray(robot_obs, np.float64)
        return flatten_obs(self._env.reset(robot_obs=robot_obs, scene_obs=consistent_scene_obs(scene_obs)))

    def step(self, rel_action: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
        obs, _, _, info = self._env.step(calvin_action(rel_action))
        return flatten_obs(obs), with_state(info, obs)

    def get_info(self) -> dict:
        """The info ``step`` returns, for the current state (e.g. right after a reset)."""
        return with_state(self._env.get_info(), self._env.get_state_obs())

    def close(self) -> None:
        """Disconnects from pybullet once; later calls, and calvin_env's ``__del__`` (which calls
        ``close`` and would raise on a second disconnect), do nothing."""
        self._env.close()
        self._env.close = _closed  # the instance attribute shadows the method, for __del__ too
