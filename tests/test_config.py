"""Config contract: presets load, values are validated with one-line errors naming the key,
derived values follow overrides, and the final config is frozen."""
import json
import math
import os

import pytest
from absl import flags
from ml_collections import config_flags

from diwa_jax import config as configlib
from experiments.calvin import TASKS, get_config
from tests.conftest import REPO


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


# ---- every rule and every relation, swept --------------------------------------------------------

# Wrong-value candidates by the type of a key's value in the quick preset; a key's bad values are those its rule
# rejects (2**63: an int beyond int64).
CANDIDATES = {int: (-1, 0, 300, 10**9, 2**63), float: (-1.0, math.nan, math.inf, 1.5, 0.0), str: ("bogus",)}


def _leaves(node, prefix=""):
    for name, value in node.items():
        if hasattr(value, "items"):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


QUICK = dict(_leaves(get_config("quick")))


def _bad_values(key) -> list:
    value = QUICK[key]
    bad = [v for v in CANDIDATES.get(type(value), ()) if not configlib._RULES[key](v)]
    assert bad, f"no candidate of type {type(value).__name__} breaks the rule of config.{key}: add one to CANDIDATES"
    return bad


def _quick_with(overrides: dict):
    c = get_config("quick")
    c.lock()  # as launch.py's config flag: an override of another type is a TypeError
    c.update_from_flattened_dict(overrides)
    return c


def _error(config) -> str:
    with pytest.raises(configlib.ConfigError) as e:
        configlib.finalize(config, "/tmp/unused")
    message = str(e.value)
    assert "\n" not in message, message
    return message


def _assert_names(message: str, key: str, value) -> None:
    """``config.<key>: <what the rule wants> (got <value>)``"""
    prefix, suffix = f"config.{key}: ", f" (got {value!r})"
    assert message.startswith(prefix) and message.endswith(suffix), message
    assert message[len(prefix):-len(suffix)] not in ("", "None"), f"give the rule of config.{key} a docstring"


def test_every_number_has_a_rule():
    numbers = [k for k, v in QUICK.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert not [k for k in numbers if k not in configlib._RULES], "add a rule to diwa_jax/config.py's _RULES"


@pytest.mark.parametrize("key", list(configlib._RULES))
def test_every_rule_names_its_key(key):
    for value in _bad_values(key):
        _assert_names(_error(_quick_with({key: value})), key, value)


VIOLATIONS = {  # relation's key -> overrides of the quick preset that break it and no other rule or relation
    "policy.ft_denoising_steps": {"policy.ft_denoising_steps": 30},  # denoising_steps: 20
    "policy.act_steps": {"policy.act_steps": 6},  # horizon: 4
    "policy.min_lr": {"policy.min_lr": 1e-3},  # lr: 1e-4
    "policy.cosine_epochs": {"policy.cosine_epochs": 10},  # warmup_epochs: 10
    "ppo.episode_len": {"ppo.episode_len": 70},  # act_steps: 4
    "ppo.clip_base": {"ppo.clip_base": 0.1},  # clip: 0.01
    "ppo.transfer_starts": {"ppo.transfer_starts": 65},  # n_start_states: 64
    "ppo.success_hold": {"ppo.success_hold": 5},  # act_steps: 4
    "ppo.reward_source": {"ppo.reward_source": "decoded_state"},  # wm.variant: vision
    "ppo.logprob_min": {"ppo.logprob_min": 2.0},  # logprob_max: 2.0
    "eval.episodes": {"eval.episodes": 0},  # start_source: simulator
    "eval.workers": {"eval.workers": 17},  # envs: 16
    "online.workers": {"online.workers": 9},  # envs: 8
    "online.tasks": {"online.tasks": ("open_drawer",), "tasks": ("close_drawer",)},
    "wm.openloop_context": {"wm.openloop_context": 951},  # + horizon 50 > seq_len 32 and segment_frames 1000
}


def test_every_relation_has_a_violation():
    keys = [key for key, _, _ in configlib._RELATIONS]
    assert len(set(keys)) == len(keys), "two relations name one key: VIOLATIONS needs a key per relation"
    assert set(VIOLATIONS) == set(keys), "add a violating override of the new relation to VIOLATIONS"


@pytest.mark.parametrize("key,what", [(key, what) for key, _, what in configlib._RELATIONS])
def test_every_relation_names_its_key(key, what):
    config = _quick_with(VIOLATIONS[key])
    assert [k for k, holds, _ in configlib._RELATIONS if not holds(config)] == [key]
    assert _error(config).startswith(f"config.{key}: {what} (got ")


def _from_command_line(*overrides):
    """The config launch.py hands to ``configlib.finalize`` for ``--config experiments/calvin.py:quick
    <overrides>``: its ml_collections flag, parsed in-process (in a FlagValues of its own)."""
    argv = ["launch.py", f"--config={os.path.join(REPO, 'experiments', 'calvin.py')}:quick", *overrides]
    flag_values = flags.FlagValues()
    config = config_flags.DEFINE_config_file("config", None, flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
    return config.value


@pytest.mark.parametrize("key", list(configlib._RULES))
def test_every_rule_names_its_key_from_the_command_line(key):
    for value in _bad_values(key):
        config = _from_command_line(f"--config.{key}={value}")
        assert repr(configlib._get(config, key)) == repr(value)  # nan, inf, -1 and 2**63 parse as themselves
        _assert_names(_error(config), key, value)


def test_a_workdir_saved_before_a_key_existed_reads_with_the_presets_default(tmp_path):
    from diwa_jax.pipeline import RESOLVED_CONFIG
    from diwa_jax.stages.evaluate import workdir_config

    saved = json.loads(configlib.to_json(configlib.finalize(get_config("tiny"), str(tmp_path))))
    del saved["ppo"]["transfer_starts"], saved["online"]  # a key and a whole section the run predates
    saved["ppo"]["alpha_bc"] = 0.2  # a value it chose
    (tmp_path / RESOLVED_CONFIG).write_text(json.dumps(saved))
    config = workdir_config(str(tmp_path), **{"eval.envs": 3})
    assert config.ppo.transfer_starts == get_config("tiny").ppo.transfer_starts
    assert config.online.envs == get_config("tiny").online.envs
    assert config.ppo.alpha_bc == 0.2 and config.eval.envs == 3


def test_a_sweep_is_a_grid_of_plain_runs_each_validated_naming_the_sweep():
    c = get_config("quick")
    c.sweep.alpha_bc, c.sweep.reward_source = (0.0, 0.1), ("classifier",)
    points = configlib.sweep_points(configlib.finalize(c, "/tmp/unused"))
    assert points == [{"ppo.alpha_bc": 0.0, "ppo.reward_source": "classifier"},
                      {"ppo.alpha_bc": 0.1, "ppo.reward_source": "classifier"}]
    run = configlib.point_config(c, points[1])
    assert run.ppo.alpha_bc == 0.1 and run.sweep.alpha_bc == () and c.ppo.alpha_bc == 0.05
    assert configlib.sweep_label(points[1]) == "alpha_bc=0.1,reward_source=classifier"
    cases = {((-1.0, 0.1), ()): "config.sweep: its run alpha_bc=-1.0 is invalid: config.ppo.alpha_bc: must be",
             ((0.1, 0.1), ()): "config.sweep.alpha_bc: the swept values must differ",
             ((0.1,), ()): "config.sweep: one run (alpha_bc=0.1) is no sweep",
             ((), ("classifier", "decoded_state")): "config.sweep: its run reward_source=decoded_state is invalid: "
                                                    "config.ppo.reward_source: decoded_state needs",
             (("a", 0.1), ()): "config.sweep: its run alpha_bc=a is invalid"}
    for (alphas, sources), message in cases.items():
        c.sweep.alpha_bc, c.sweep.reward_source = alphas, sources
        assert _error(c).startswith(message)


def test_alpha_bc_by_task_sets_the_named_tasks_and_the_rest_keep_ppo_alpha_bc():
    from diwa_jax.specs import finetune_spec

    c = get_config("quick")
    c.tasks = ("open_drawer", "close_drawer", "turn_on_led")
    c.ppo.alpha_bc_by_task = "open_drawer=0.1, close_drawer=0.025"
    config = configlib.finalize(c, "/tmp/unused")
    assert [finetune_spec(config, t).alpha_bc for t in c.tasks] == [0.1, 0.025, 0.05]
    cases = {"open_drawer:0.1": "config.ppo.alpha_bc_by_task: 'open_drawer:0.1' is not TASK=VALUE",
             "open_drawer=-1": "config.ppo.alpha_bc_by_task: 'open_drawer=-1' is not TASK=VALUE",
             "open_drawer=nan": "config.ppo.alpha_bc_by_task: 'open_drawer=nan' is not TASK=VALUE",
             "turn_off_led=0.1": "config.ppo.alpha_bc_by_task: 'turn_off_led' is not a task of config.tasks",
             "open_drawer=0.1,open_drawer=0.2": "config.ppo.alpha_bc_by_task: 'open_drawer' is named twice"}
    for text, message in cases.items():
        c.ppo.alpha_bc_by_task = text
        assert _error(c).startswith(message), text
    c.ppo.alpha_bc_by_task, c.sweep.alpha_bc = "open_drawer=0.1", (0.0, 0.1)
    assert _error(c).startswith("config.ppo.alpha_bc_by_task: set while config.sweep.alpha_bc sweeps")
