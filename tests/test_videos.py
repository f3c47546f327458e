"""Rollout videos (`--config.log.video=True`): the real half is the evaluation's own episode (the frame callback
changes nothing) at the world model's image size, the imagined half starts from the evaluation's first latent,
covers max_steps, is deterministic and follows the policy; the evaluate stage writes one GIF and one TensorBoard
video per policy and counts their simulator steps as evaluation steps."""
import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

from diwa_jax import config as configlib
from diwa_jax import artifacts, evaluate, pipeline, specs, videos
from diwa_jax.artifacts import caches as ensure_cache
from diwa_jax.artifacts import data_split_dir as split_dir
from diwa_jax.artifacts import load_finetuned_actor, load_policy, load_world_model
from diwa_jax.data.preprocess import wm_observation
from diwa_jax.envs.batch import SimulatorBatch
from diwa_jax.stages.start_lists import start_list
from diwa_jax.world_model import model
from experiments.calvin import get_config

TASK = "move_slider_left"  # the tiny preset's one task


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny pipeline with videos on, in this process (the tests reuse its compiled programs), and its models."""
    c = get_config("tiny")
    c.log.video = True
    config = configlib.finalize(c, str(tmp_path_factory.mktemp("videos") / "run"))
    pipeline.run(config)
    caches = ensure_cache(config)
    starts = start_list(config, TASK, "final").states
    _, actor_pre = load_policy(config, TASK)
    evaluation = dict(world_model=load_world_model(config), stats=caches["training"].stats, starts=starts)
    return config, actor_pre, load_finetuned_actor(config, TASK, 0), evaluation


@pytest.fixture(scope="module")
def env(run):
    env = specs.make_env(run[0])
    yield env
    env.close()


def video(run, env, actor_pre, actor_ft, **kwargs):
    config, _, _, evaluation = run
    kwargs = {"key": configlib.stage_key(config, f"evaluate/{TASK}"), **kwargs}
    return videos.rollout_video(specs.eval_spec(config), specs.policy_schedule(config), TASK, actor_pre, actor_ft,
                                env=env, **evaluation, **kwargs)


class RecordingEnv:
    """The simulator, recording every observation it returns."""

    def __init__(self, env):
        self.env, self.observations = env, []

    def reset(self, **kwargs):
        self.observations.append(self.env.reset(**kwargs))
        return self.observations[-1]

    def step(self, action):
        obs, info = self.env.step(action)
        self.observations.append(obs)
        return obs, info


def test_frames_put_real_left_of_imagined_and_hold_the_shorter_episode_on_its_last_frame():
    real = np.arange(3 * 2 * 2 * 3, dtype=np.uint8).reshape(3, 2, 2, 3)  # a success after 2 steps
    imagined = 100 + np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    frames = videos.RolloutVideo(real=real, imagined=imagined, sim_steps=2).frames()
    assert frames.shape == (5, 2, 4, 3)
    np.testing.assert_array_equal(frames[:, :, 2:], imagined)
    np.testing.assert_array_equal(frames[:, :, :2], real[[0, 1, 2, 2, 2]])


def test_real_half_is_the_evaluation_episode_and_the_imagined_half_covers_max_steps(run, env):
    config, actor_pre, actor_ft, evaluation = run
    v = video(run, env, actor_pre, actor_ft)
    size, max_steps = config.data.image_size, config.eval.max_steps
    assert 1 <= v.sim_steps <= max_steps
    assert v.real.shape == (1 + v.sim_steps, size, size, 3) and v.real.dtype == np.uint8
    assert v.imagined.shape == (1 + max_steps, size, size, 3) and v.imagined.dtype == np.uint8
    frames = v.frames()
    length = max(len(v.real), len(v.imagined))
    assert frames.shape == (length, size, 2 * size, 3)
    real_half, imagined_half = frames[:, :, :size], frames[:, :, size:]
    np.testing.assert_array_equal(real_half[:len(v.real)], v.real)
    assert all(np.array_equal(frame, v.real[-1]) for frame in real_half[len(v.real):])  # held on its last frame
    np.testing.assert_array_equal(imagined_half, v.imagined)

    # a plain evaluation (no callback) of the first start with the evaluation key sees the same frames
    recorder = RecordingEnv(env)
    batch = SimulatorBatch.local([recorder], evaluate.observation_transform(evaluation["world_model"],
                                                                           evaluation["stats"], size))
    plain = evaluate.evaluate_policy(specs.eval_spec(config), TASK, specs.policy_schedule(config), actor_pre, actor_ft,
                                     episodes=1, key=configlib.stage_key(config, f"evaluate/{TASK}"), envs=batch,
                                     world_model=evaluation["world_model"], starts=evaluation["starts"])
    assert plain["sim_steps"] == v.sim_steps and len(recorder.observations) == len(v.real)
    seen = [wm_observation(obs, evaluation["stats"], size)["rgb_static"] for obs in recorder.observations]
    np.testing.assert_array_equal(np.stack(seen), v.real)


def test_imagined_half_starts_from_the_evaluation_latent_is_deterministic_and_follows_the_policy(
        run, env, monkeypatch):
    config, actor_pre, actor_ft, evaluation = run
    spec, params = evaluation["world_model"].spec, evaluation["world_model"].params
    first_latents = []
    filter_frames = evaluate.filter_frames

    def recording_filter(params, latent, frames, actions, valid, observed, reset, *args, **kwargs):
        post = filter_frames(params, latent, frames, actions, valid, observed, reset, *args, **kwargs)
        if reset[0, 0]:
            first_latents.append(jax.tree.map(lambda x: x[0], post))
        return post

    monkeypatch.setattr(evaluate, "filter_frames", recording_filter)
    v = video(run, env, actor_pre, actor_ft)
    # the real episode's first frame, then the video encoding that frame again for its imagined half: same latent
    assert len(first_latents) == 2
    np.testing.assert_array_equal(first_latents[0].deter, first_latents[1].deter)
    np.testing.assert_array_equal(first_latents[0].stoch, first_latents[1].stoch)
    first = videos.to_uint8(model.decode(params, spec, first_latents[1].feature())["rgb_static"])[0]
    np.testing.assert_array_equal(v.imagined[0], first)

    compiled = videos.imagine_episode._cache_size()
    again = video(run, env, actor_pre, actor_ft)
    np.testing.assert_array_equal(again.imagined, v.imagined)
    np.testing.assert_array_equal(again.real, v.real)
    other_actor = jax.tree.map(jnp.negative, actor_pre)
    other = video(run, env, other_actor, other_actor)
    np.testing.assert_array_equal(other.imagined[0], v.imagined[0])  # same start latent ...
    assert not np.array_equal(other.imagined[1:], v.imagined[1:])  # ... other actions, other imagined frames
    other_key = video(run, env, actor_pre, actor_ft, key=jax.random.key(123))
    assert not np.array_equal(other_key.imagined, v.imagined)
    assert videos.imagine_episode._cache_size() == compiled  # one compiled program for every policy and key


def tensorboard_values(logdir):
    """``(step, Summary.Value)`` of every TFRecord event file in ``logdir``."""
    for name in sorted(os.listdir(logdir)):
        if not name.startswith("events.out.tfevents"):
            continue
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                yield event.step, value


def test_evaluate_stage_writes_gifs_and_tensorboard_videos_and_counts_their_steps(run, env):
    config, actor_pre, actor_ft, _ = run
    workdir = config.derived.workdir
    expected = {"pretrained": video(run, env, actor_pre, actor_pre), "finetuned": video(run, env, actor_pre, actor_ft)}
    size = config.data.image_size
    for name, v in expected.items():
        frames = v.frames()
        with Image.open(os.path.join(workdir, artifacts.VIDEO_DIR, f"{TASK}_{name}.gif")) as gif:
            assert gif.size == (2 * size, size) and gif.is_animated
            # PIL merges a frame equal to the one before into it: count the changes, and the time they cover
            changes = 1 + sum(not np.array_equal(a, b) for a, b in zip(frames[:-1], frames[1:]))
            assert gif.n_frames == changes
            durations = []
            for i in range(gif.n_frames):
                gif.seek(i)
                durations.append(gif.info["duration"])
            assert sum(durations) == len(frames) * 1000 // videos.FPS

    summaries = {value.tag: (step, value) for step, value in tensorboard_values(pipeline.stage_dir(config, "evaluate"))}
    for name in expected:
        step, value = summaries[f"video/{TASK}/{name}"]
        assert step == 0 and value.image.encoded_image_string[:4] == b"GIF8"
        assert (value.image.height, value.image.width) == (size, 2 * size)

    # the videos' real episodes are evaluation: counted in eval_sim_steps next to the evaluation episodes
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    r = results["tasks"][TASK]
    episodes_steps = round((r["pretrained"]["mean_steps"] + r["finetuned"][0]["mean_steps"]) * r["episodes"])
    video_steps = sum(v.sim_steps for v in expected.values())
    assert r["eval_sim_steps"] == episodes_steps + video_steps and results["eval_sim_steps"] == r["eval_sim_steps"]
    assert results["finetune_sim_steps"] == 0
