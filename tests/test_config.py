"""Config contract: presets load, values are validated with one-line errors naming the key,
derived values follow overrides, and the final config is frozen."""
import pytest

from diwa_jax import config as configlib
from experiments.calvin import TASKS, get_config


@pytest.mark.parametrize("preset", ["", "paper", "quick", "tiny"])
def test_presets_validate(preset, tmp_path):
    cfg = configlib.finalize(get_config(preset), str(tmp_path))
    assert cfg.derived.latent_dim == cfg.wm.deter + cfg.wm.stoch * cfg.wm.classes
    assert cfg.derived.workdir == str(tmp_path)


def test_paper_defaults_match_spec(tmp_path):
    cfg = configlib.finalize(get_config(), str(tmp_path))
    assert cfg.derived.latent_dim == 2048
    assert cfg.derived.samples_per_iteration == 1800
    assert cfg.derived.episode_chunks == 18
    assert cfg.derived.state_dim == 51 and cfg.derived.proprio_dim == 18
    assert (cfg.ppo.clip, cfg.ppo.clip_base, cfg.ppo.alpha_bc) == (0.01, 0.001, 0.05)
    assert tuple(cfg.tasks) == TASKS


def test_derived_values_follow_overrides(tmp_path):
    c = get_config("tiny")
    c.wm.deter = 10
    c.ppo.n_envs = 7
    cfg = configlib.finalize(c, str(tmp_path))
    assert cfg.derived.latent_dim == 10 + c.wm.stoch * c.wm.classes
    assert cfg.derived.samples_per_iteration == 7 * c.ppo.n_steps


def test_data_path_disables_collection(tmp_path):
    c = get_config("tiny")
    c.data.path = str(tmp_path / "task_D_D")
    cfg = configlib.finalize(c, str(tmp_path / "run"))
    assert not cfg.derived.collect_data and cfg.derived.data_dir == str(tmp_path / "task_D_D")


@pytest.mark.parametrize("key,value,fragment", [
    ("ppo.actor_lr", -1.0, "config.ppo.actor_lr: must be finite and > 0"),
    ("wm.variant", "pixels", "config.wm.variant: must be one of"),
    ("collect.failure_prob", 1.5, "config.collect.failure_prob: must be in [0, 1]"),
    ("policy.ft_denoising_steps", 30, "config.policy.ft_denoising_steps: must be <= config.policy.denoising_steps"),
    ("ppo.episode_len", 70, "config.ppo.episode_len: must be a multiple"),
    ("policy.cosine_epochs", 1, "config.policy.cosine_epochs: must exceed config.policy.warmup_epochs"),
    ("ppo.logprob_reduce", "max", "config.ppo.logprob_reduce: must be one of"),
    ("wm.classes", 300, "config.wm.classes: must be in [1, 256]"),
])
def test_bad_values_name_the_key(key, value, fragment, tmp_path):
    c = get_config("quick")
    section, field = key.split(".")
    c[section][field] = value
    with pytest.raises(configlib.ConfigError) as e:
        configlib.finalize(c, str(tmp_path))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_unknown_task_rejected(tmp_path):
    c = get_config("tiny")
    c.tasks = ("open_drawer", "fly_away")
    with pytest.raises(configlib.ConfigError, match="config.tasks: unknown task"):
        configlib.finalize(c, str(tmp_path))


def test_locked_config_rejects_new_keys_and_wrong_types():
    c = get_config("tiny")
    c.lock()
    with pytest.raises(AttributeError):
        c.ppo.no_such_key = 1
    with pytest.raises(TypeError):
        c.ppo.n_envs = "many"


def test_final_config_is_frozen(tmp_path):
    cfg = configlib.finalize(get_config("tiny"), str(tmp_path))
    with pytest.raises((AttributeError, TypeError, ValueError)):
        cfg.ppo.n_envs = 3


def test_json_round_trip(tmp_path):
    import json
    cfg = configlib.finalize(get_config("tiny"), str(tmp_path))
    data = json.loads(configlib.to_json(cfg))
    assert data["ppo"]["n_envs"] == cfg.ppo.n_envs and data["derived"]["latent_dim"] == cfg.derived.latent_dim
