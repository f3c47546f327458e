"""Stage bookkeeping: a complete stage is skipped, one made under other config values is refused
with the keys named, and unknown stage names are rejected."""
import pytest

from diwa_jax import config as configlib
from diwa_jax import pipeline


def _stage(name):
    return next(s for s in pipeline.STAGES if s.name == name)


def test_marker_round_trip_and_config_change(tiny_config, tmp_path):
    cfg = configlib.finalize(tiny_config, str(tmp_path))
    stage = _stage("world_model")
    assert not pipeline.is_complete(cfg, stage)
    pipeline.mark_complete(cfg, stage, {"loss": 1.0})
    assert pipeline.is_complete(cfg, stage)

    # a change in a section the stage does not depend on keeps it complete
    other = tiny_config.copy_and_resolve_references()
    other.ppo.actor_lr = 1.0
    assert pipeline.is_complete(configlib.finalize(other, str(tmp_path)), stage)

    changed = tiny_config.copy_and_resolve_references()
    changed.wm.deter = 64
    with pytest.raises(configlib.ConfigError, match=r"config\.wm\.deter"):
        pipeline.is_complete(configlib.finalize(changed, str(tmp_path)), stage)


def test_select_keeps_pipeline_order():
    names = [s.name for s in pipeline.select(["featurize", "collect"])]
    assert names == ["collect", "featurize"]
    assert [s.name for s in pipeline.select([])] == [s.name for s in pipeline.DEFAULT_STAGES]
    assert "online" in pipeline.STAGE_NAMES and "online" not in [s.name for s in pipeline.DEFAULT_STAGES]


def _with(tiny_config, tmp_path, **values):
    c = tiny_config.copy_and_resolve_references()
    for key, value in values.items():
        section, name = key.split("__")
        c[section][name] = value
    return configlib.finalize(c, str(tmp_path))


def test_a_run_that_would_mix_simulators_is_refused_in_one_line(tiny_config, tmp_path):
    import json
    import os

    from diwa_jax import artifacts
    cfg = _with(tiny_config, tmp_path / "w")
    assert artifacts.data_simulator(cfg) is None  # nothing collected yet: collect will record the backend
    os.makedirs(artifacts.data_split_dir(cfg, "training"))
    artifacts.record_data_simulator(cfg)
    with open(os.path.join(cfg.derived.data_dir, artifacts.SIMULATOR_RECORD)) as f:
        assert json.load(f) == {"backend": "playtable", "scene": "playtable"}

    other = _with(tiny_config, tmp_path / "w", env__backend="calvin_env")
    with pytest.raises(configlib.ConfigError) as info:
        pipeline.run(other)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(cfg.derived.data_dir) and "playtable" in msg
    assert "--config.data.allow_simulator_mismatch=True" in msg
    assert sorted(os.listdir(tmp_path / "w")) == ["collect"]  # refused before anything was written
    with pytest.raises(Exception, match="mix two simulators in one data set"):
        artifacts.record_data_simulator(other)  # more frames of another simulator are never added
    pipeline._check_simulator(_with(tiny_config, tmp_path / "w", env__backend="calvin_env",
                                    data__allow_simulator_mismatch=True))  # the user opted in

    # CALVIN's own data sets carry no record: they were recorded in calvin_env
    calvin_data = tmp_path / "task_D_D"
    for split in ("training", "validation"):
        os.makedirs(calvin_data / split)
    with pytest.raises(configlib.ConfigError, match="recorded in calvin_env"):
        pipeline._check_simulator(_with(tiny_config, tmp_path / "v", data__path=str(calvin_data)))
    pipeline._check_simulator(_with(tiny_config, tmp_path / "v", data__path=str(calvin_data), env__backend="calvin_env"))
