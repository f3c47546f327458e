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
    assert [s.name for s in pipeline.select([])] == list(pipeline.STAGE_NAMES)
