"""The transfer diagnostic: real, imagined and replayed success from the same starts. In the stand-in
simulator the drawer opens at a rate set by the start state whatever the actions, so the oracle's verdicts
are known; a classifier that always (or never) fires fixes the imagined ones."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diwa_jax import config as configlib
from diwa_jax import evaluate, specs, transfer
from diwa_jax.data.preprocess import compute_norm_stats
from diwa_jax.envs.batch import SimulatorBatch
from diwa_jax.finetune.imagine import FrozenModels
from diwa_jax.reward.classifier import init_classifier
from tests.test_evaluate import DrawerEnv, _models


def _classifier(config, feature_dim: int, fires: bool) -> dict:
    params = init_classifier(jax.random.key(5), specs.reward_spec(config), feature_dim)
    params["head_2"] = {"w": jnp.zeros_like(params["head_2"]["w"]),
                        "b": jnp.array([0.0, 1.0] if fires else [1.0, 0.0])}
    return params


@pytest.mark.parametrize("fires", [True, False])
def test_real_imagined_and_replayed_success_from_the_same_starts(tiny_config, tmp_path, fires):
    tiny_config.eval.max_steps = 8
    config = configlib.finalize(tiny_config, str(tmp_path))
    spec = specs.eval_spec(config)
    assert spec.act_steps == 4
    world_model, actor = _models(config)
    _, other_actor = _models(config, seed=7)
    robot, scene = np.zeros((3, 15)), np.zeros((3, 24))
    robot[:, 0] = [1.0, 0.5, 0.0]  # open_drawer after 3 steps, after 5, never
    scene[:, 6] = np.arange(3)  # the simulators' logs tell the starts apart
    stats = compute_norm_stats(robot + np.linspace(-0.1, 0.1, 3)[:, None], scene, rot6d=True, source="test")
    envs = [DrawerEnv(), DrawerEnv()]
    batch = SimulatorBatch.local(envs, evaluate.observation_transform(world_model, stats, config.data.image_size))
    classifier = _classifier(config, world_model.spec.feature_dim, fires)
    models = FrozenModels(wm=world_model.params, classifier=classifier, actor_pre=actor,
                          schedule=specs.policy_schedule(config))
    common = dict(reward_mode="binary", success_hold=1, world_model=world_model, starts=(robot, scene), envs=batch,
                  key=jax.random.key(3))
    result = transfer.transfer_diagnostic(spec, "open_drawer", models, actor, **common)

    assert result["episode_real"] == [True, True, False]
    if fires:  # success claimed after the first chunk: its 4 actions open the drawer only for the first start
        assert result["episode_imagined"] == [True, True, True]
        assert result["episode_replayed"] == [True, False, False]
        assert result["classifier_precision_imagined"] == pytest.approx(1 / 3) and result["confirmed_successes"] == 1
        assert result["agreement"] == pytest.approx(2 / 3)
    else:  # never claimed: every replay runs all 8 steps
        assert result["episode_imagined"] == [False, False, False]
        assert result["episode_replayed"] == [True, True, False]
        assert result["classifier_precision_imagined"] is None
    assert result["starts"] == 3 and result["imagined_success"] == pytest.approx(1.0 if fires else 0.0)
    # on the real episodes' own latents: yes on every one of them, or on none; the third start fails
    assert result["episode_judged_real"] == [fires] * 3 and result["real_failures"] == 1
    assert result["real_false_alarms"] == int(fires) and result["classifier_false_alarms_real"] == float(fires)
    replay_steps = [3, 4, 4] if fires else [3, 5, 8]
    assert result["sim_steps"] == 3 + 5 + 8 + sum(replay_steps)
    logs = {e: np.stack(log) for env in envs for e, log in env.actions.items()}
    for e, real_steps in enumerate([3, 5, 8]):  # the real episode's actions, then the replay's
        real, replayed = logs[e][:real_steps], logs[e][real_steps:]
        assert len(replayed) == replay_steps[e]
        # the same first latent and noise: the replay starts with the real episode's first chunk
        n = min(len(real), len(replayed), spec.act_steps)
        np.testing.assert_allclose(replayed[:n], real[:n], atol=1e-6)
    assert result["first_chunk_rms_from_pretrained"] == 0.0
    moved = transfer.transfer_diagnostic(spec, "open_drawer", models, other_actor, **common)
    assert moved["first_chunk_rms_from_pretrained"] > 0.0


def test_seeds_pool_into_the_results_table():
    from diwa_jax.stages.evaluate import transfer_over_seeds, transfer_table

    def point(imagined, real, claimed, confirmed, judged=None):
        judged = {} if judged is None else {"real_failures": judged[0], "real_false_alarms": judged[1]}
        return {"starts": 4, "imagined_success": imagined, "real_success": real, "replayed_success": confirmed / 4,
                "agreement": 0.5, "first_chunk_rms_from_pretrained": 0.1, "imagined_successes": claimed,
                "confirmed_successes": confirmed, "classifier_precision_imagined": confirmed / claimed if claimed else None,
                **judged}

    seeds = [{"pretrained": point(0.75, 0.25, 3, 1, (2, 1)), "finetuned": point(1.0, 0.5, 4, 2, (4, 2))},
             {"pretrained": point(0.0, 0.25, 0, 0), "finetuned": point(0.5, 0.0, 2, 0)},  # made before real judging
             {}]  # a seed fine-tuned without the diagnostic
    pooled = transfer_over_seeds(seeds)
    assert pooled["seeds"] == 2 and pooled["starts"] == 4
    assert pooled["finetuned"]["imagined_success"] == pytest.approx(0.75)
    assert pooled["finetuned"]["real_success"] == pytest.approx(0.25)
    assert pooled["pretrained"]["classifier_precision_imagined"] == pytest.approx(1 / 3)
    assert pooled["finetuned"]["classifier_precision_imagined"] == pytest.approx(2 / 6)
    assert pooled["pretrained"]["classifier_false_alarms_real"] == pytest.approx(1 / 2)
    assert pooled["finetuned"]["classifier_false_alarms_real"] == pytest.approx(2 / 4)
    assert transfer_over_seeds([{}]) is None
    table = transfer_table({"open_drawer": {"transfer": pooled}, "close_drawer": {"transfer": None}})
    assert "| open_drawer | 4 x 2 | 37.5 / 25.0 | 75.0 / 25.0 / 25.0 | +50.0 | 0.33 / 0.33 | 0.50 / 0.50 | 0.100 |" in table
    assert "close_drawer" not in table and "| **mean** | | | | +50.0 |" in table
    assert transfer_table({"open_drawer": {"transfer": None}}) == ""
