"""The finetune and evaluate stages end to end: one `launch.py` command on the tiny preset (two fine-tuning
seeds) runs all seven stages and writes the result table with consistent numbers, intervals and zero
simulator steps during fine-tuning; the simulator start pool is rendered from starts of no evaluation list
and encoded like an evaluation's first frame; the offline pool holds the training windows' first latents;
a stored policy re-evaluated standalone gives the table's numbers; a wrong K' is refused; and a fine-tuning
run interrupted mid-way and rerun ends with the same checkpoint and curve as the uninterrupted run."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from diwa_jax import artifacts
from diwa_jax import config as configlib
from diwa_jax import pipeline, specs
from diwa_jax.checkpoint import Checkpointer
from diwa_jax.data.batching import select_windows, task_windows
from diwa_jax.data.calvin_format import CalvinSplit
from diwa_jax.artifacts import data_split_dir as split_dir
from diwa_jax.artifacts import load_features, load_policy
from diwa_jax.errors import CheckpointError
from diwa_jax.finetune.agent import create_finetune_state
from diwa_jax.stages import evaluate as evaluate_stage
from diwa_jax.stages.evaluate import with_interval
from diwa_jax.stages import finetune as stage
from diwa_jax.stages.start_lists import start_list
from diwa_jax.stats import paired_difference, wilson_interval
from diwa_jax.training import restore_state
from diwa_jax.types import Latent
from experiments.calvin import get_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "move_slider_left"  # the tiny preset's one task
SEEDS = 2  # fine-tuning seeds of the module's run


def tiny(workdir, seeds=SEEDS, **ppo):
    c = get_config("tiny")
    c.seeds = seeds
    c.ppo.update(ppo)
    return configlib.finalize(c, str(workdir))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipeline") / "run"
    cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--config",
           os.path.join(REPO, "experiments", "calvin.py") + ":tiny", "--workdir", str(workdir), f"--config.seeds={SEEDS}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir, out.stdout


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_one_command_runs_every_stage_and_writes_the_results(full_run):
    workdir, stdout = full_run
    config = tiny(workdir)
    for s in pipeline.DEFAULT_STAGES:
        assert (workdir / s.name / pipeline.MARKER).exists(), s.name
    results = read_json(workdir / "results.json")
    assert set(results["tasks"]) == {TASK} and results["seed"] == config.seed and results["preset"] == "tiny"
    assert results["seeds"] == SEEDS
    r = results["tasks"][TASK]
    assert r["episodes"] == config.eval.episodes == len(start_list(config, TASK, "final"))
    pre = r["pretrained"]
    assert pre["rate"] == pytest.approx(sum(pre["episode_success"]) / r["episodes"])
    assert pre["interval"] == list(wilson_interval(pre["successes"], r["episodes"]))
    assert len(r["finetuned"]) == SEEDS
    for k, ft in enumerate(r["finetuned"]):
        assert ft["seed_index"] == k and ft["episodes"] == r["episodes"]
        assert ft["rate"] == pytest.approx(ft["successes"] / r["episodes"])
        paired = paired_difference(pre["episode_success"], ft["episode_success"])
        assert ft["gain"] == pytest.approx(ft["rate"] - pre["rate"]) == pytest.approx(paired["difference"])
        assert ft["gain_interval"] == list(paired["interval"])
        assert ft["finetune_iterations"] == config.ppo.iterations and ft["finetune_sim_steps"] == 0
        # the curve: iteration 0 (pre-trained, evaluated), every iteration's imagined success, real success at
        # every eval_every-th and the last, on the periodic list; the table's imagined success is the last entry
        curve = artifacts.read_curve(config, TASK, k)
        assert [e["iteration"] for e in curve] == list(range(config.ppo.iterations + 1))
        assert [e["iteration"] for e in curve if e["real_success"] is not None] == [0, 2, 3]  # eval_every 2, 3 its
        assert all(e["eval_episodes"] == config.eval.periodic_episodes for e in curve if e["real_success"] is not None)
        assert all(0.0 <= e["imagined_success"] <= 1.0 and e["imagined_episodes"] > 0 for e in curve[1:])
        assert ft["imagined_success"] == curve[-1]["imagined_success"]
        summary = read_json(artifacts.finetune_dir(config, TASK, k) + "/" + artifacts.DONE)
        assert summary["start_frames_rendered"] == config.ppo.n_start_states  # the counter saw the resets ...
        assert summary["finetune_sim_steps"] == 0  # ... and no step
        assert summary["eval_sim_steps"] > 0 and summary["sampler"]["ft_steps"] == config.policy.ft_denoising_steps
    # the two seeds fine-tune differently (own key, own start pool)
    pools = [np.load(artifacts.start_pool_path(config, TASK, k))["scene_obs"] for k in range(SEEDS)]
    assert not np.array_equal(pools[0], pools[1])
    assert r["finetuned_over_seeds"]["mean"] == pytest.approx(np.mean([ft["rate"] for ft in r["finetuned"]]))
    assert results["finetune_sim_steps"] == 0
    assert 0 < r["eval_sim_steps"] <= (1 + SEEDS) * r["episodes"] * config.eval.max_steps
    assert results["mean"]["finetuned"][0]["rate"] == pytest.approx(r["finetuned"][0]["rate"])
    assert set(results["wall_time_s"]) == {s.name for s in pipeline.DEFAULT_STAGES}

    table = (workdir / "results.md").read_text()
    header = f"| fine-tuned %, mean ± std over {SEEDS} seeds |"
    assert header in table and header in stdout
    lo, hi = pre["interval"]
    assert f"| {TASK} | {r['episodes']} | {100 * pre['rate']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] |" in table
    assert "mean over tasks" in table and "during fine-tuning: **0**" in table and "seed 1" in table
    assert (workdir / "success_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_final_list_periodic_list_and_start_pools_share_no_start(full_run, tmp_path):
    workdir, _ = full_run
    config = tiny(workdir)
    final, periodic = start_list(config, TASK, "final"), start_list(config, TASK, "periodic")
    assert len(final) == config.eval.episodes and len(periodic) == config.eval.periodic_episodes
    pools = [np.load(artifacts.start_pool_path(config, TASK, k))["scene_obs"] for k in range(SEEDS)]
    lists = [final.scene_obs, periodic.scene_obs] + pools
    for i, a in enumerate(lists):
        for b in lists[i + 1:]:
            assert not any(np.allclose(x, y) for x in a for y in b)
    # the lists do not depend on the run's seed (every seed is judged on the same starts)
    c = get_config("tiny")
    c.seed = 5
    elsewhere = configlib.finalize(c, str(tmp_path))
    np.testing.assert_array_equal(start_list(elsewhere, TASK, "final").scene_obs, final.scene_obs)
    assert os.path.exists(artifacts.start_list_path(elsewhere, TASK, "final"))  # made and stored on first use


def test_stored_policy_re_evaluated_standalone_gives_the_tables_numbers(full_run):
    workdir, _ = full_run
    results = read_json(workdir / "results.json")["tasks"][TASK]
    for policy, seed_index, expected in (("pretrained", 0, results["pretrained"]),
                                         ("finetuned", 1, results["finetuned"][1])):
        out = subprocess.run([sys.executable, "-m", "diwa_jax.stages.evaluate", "--workdir", str(workdir), "--task",
                              TASK, "--policy", policy, "--seed_index", str(seed_index)], capture_output=True,
                             text=True, cwd=REPO, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
        assert out.returncode == 0, out.stderr[-2000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
        for key in ("episodes", "successes", "rate", "episode_success", "mean_steps"):
            assert got[key] == expected[key], key
    # K' other than the one the policy was fine-tuned with is refused, in one line, before any episode
    out = subprocess.run([sys.executable, "-m", "diwa_jax.stages.evaluate", "--workdir", str(workdir), "--task", TASK,
                          "--ft_denoising_steps", "2"], capture_output=True, text=True, cwd=REPO, timeout=300,
                         env=dict(os.environ, PYTHONPATH=REPO))
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1 and "ft_steps=3 (asked: 2)" in errors[0]
    assert "Traceback" not in out.stderr
    with pytest.raises(CheckpointError, match="ft_steps=3"):
        artifacts.load_finetuned_actor(tiny(workdir), TASK, 0, ft_steps=1)


def test_the_transfer_diagnostic_is_tabulated_and_reproduced_standalone(full_run):
    workdir, _ = full_run
    points = read_json(workdir / "finetune" / TASK / "seed1" / "transfer.json")
    assert set(points) == {"pretrained", "finetuned"} and points["finetuned"]["iteration"] == 3
    assert "Transfer diagnostic" in (workdir / "results.md").read_text()
    assert read_json(workdir / "results.json")["tasks"][TASK]["transfer"]["seeds"] == SEEDS
    out = subprocess.run([sys.executable, "-m", "diwa_jax.stages.evaluate", "--workdir", str(workdir), "--task", TASK,
                          "--policy", "finetuned", "--seed_index", "1", "--transfer", "2"], capture_output=True,
                         text=True, cwd=REPO, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for key, value in points["finetuned"].items():
        assert got[key] == value, key


def test_the_diagnostics_what_if_reward_is_validated_as_a_config(full_run):
    workdir, _ = full_run
    for flags, key in ((["--success_hold", "5"], "config.ppo.success_hold"),  # > policy.act_steps = 4
                       (["--reward_source", "decoded_state"], "config.ppo.reward_source")):  # a vision run
        out = subprocess.run([sys.executable, "-m", "diwa_jax.stages.evaluate", "--workdir", str(workdir), "--task",
                              TASK, "--policy", "pretrained", "--transfer", "2", *flags], capture_output=True,
                             text=True, cwd=REPO, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
        assert out.returncode == 2 and key in out.stderr, out.stderr[-2000:]
    judged = evaluate_stage.judged_with(evaluate_stage.workdir_config(str(workdir)), str(workdir),
                                        **{"ppo.success_hold": 3, "ppo.reward_source": None})
    assert judged.ppo.success_hold == 3 and judged.ppo.reward_source == "classifier"


def test_a_stored_start_list_made_under_other_values_is_refused(full_run, tmp_path):
    workdir, _ = full_run
    shutil.copytree(workdir / "starts", tmp_path / "starts")
    c = get_config("tiny")
    c.eval.episodes = 5
    config = configlib.finalize(c, str(tmp_path))
    with pytest.raises(configlib.ConfigError, match=r"final.npz: .*config.eval.episodes=5 \(the list has 3\)"):
        start_list(config, TASK, "final")
    assert len(start_list(config, TASK, "periodic")) == c.eval.periodic_episodes  # the periodic list still fits


def test_start_pools_are_non_evaluation_starts_encoded_like_a_first_frame(full_run):
    workdir, _ = full_run
    config = tiny(workdir)
    with np.load(artifacts.start_pool_path(config, TASK, 0)) as saved:
        pool, robot, scene = Latent(deter=saved["deter"], stoch=saved["stoch"]), saved["robot_obs"], saved["scene_obs"]
    n = config.ppo.n_start_states
    assert pool.deter.shape == (n, config.wm.deter) and robot.shape == (n, 15) and scene.shape == (n, 24)
    # the task's random starts (slider not yet left) of seed 0's stream
    np.testing.assert_array_equal(np.stack(stage.simulator_start_states(config, TASK, n, 0)[1]), scene)
    caches = artifacts.caches(config)
    # re-rendering and encoding the first start reproduces its pool latent: a reset posterior on one frame
    from diwa_jax.specs import make_env
    from diwa_jax.artifacts import load_world_model
    env = make_env(config)
    try:
        frame = env.reset(robot_obs=robot[0], scene_obs=scene[0])
    finally:
        env.close()
    latent = stage.encode_start_frames(load_world_model(config), caches["training"].stats, [frame],
                                       configlib.stage_key(config, f"finetune/{TASK}/seed0/start_pool"),
                                       config.data.image_size)
    np.testing.assert_allclose(latent.deter[0], pool.deter[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(latent.stoch[0], pool.stoch[0])  # the posterior sample: image and key
    assert len(np.unique(pool.stoch.argmax(-1), axis=0)) > 1  # different frames, different posteriors

    # offline pool: the featurized latents at the first frame of the task's training windows
    offline = tiny(workdir, start_source="dataset")
    pool, described = stage.build_start_pool(offline, TASK, 0, None, None, None)
    windows = task_windows(CalvinSplit(split_dir(config, "training")), caches["training"], TASK)
    rows = select_windows(windows, n, config.seed)[:, 0]
    np.testing.assert_array_equal(described["rows"], rows)
    features = load_features(config, "training")
    np.testing.assert_array_equal(pool.deter, features.deter[rows])
    np.testing.assert_array_equal(pool.stoch.argmax(-1), features.stoch[rows])


def finetune_state(config):
    """The ``FinetuneState`` in the task's last fine-tuning checkpoint."""
    _, actor_pre = load_policy(config, TASK)
    with np.load(artifacts.start_pool_path(config, TASK, 0)) as saved:
        pool = Latent(deter=saved["deter"], stoch=saved["stoch"])
    template = create_finetune_state(specs.finetune_spec(config, config.tasks[0]), jax.random.key(0), actor_pre, pool)
    with Checkpointer(os.path.join(artifacts.finetune_dir(config, TASK, 0), "checkpoints")) as ck:
        return ck.latest_step(), restore_state(ck, template)


def as_numpy(tree):
    is_key = lambda x: isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)  # noqa: E731
    return [np.asarray(jax.random.key_data(x) if is_key(x) else x) for x in jax.tree.leaves(tree)]


def test_interrupted_finetune_resumes_to_the_uninterrupted_result(full_run, tmp_path, monkeypatch):
    workdir, _ = full_run
    resumed = tmp_path / "run"
    shutil.copytree(workdir, resumed, ignore=shutil.ignore_patterns("finetune", "evaluate", "results.*",
                                                                      "success_curves.png"))
    config = tiny(resumed, seeds=1)  # seed 0 alone: the same run as seed 0 of the module's two
    assert config.ppo.ckpt_every == 1 and config.ppo.eval_every == 2

    save = Checkpointer.save

    def killed_before_checkpoint_2(self, step, items, **kwargs):  # after iteration 2's curve entry was written
        if step == 2:
            raise KeyboardInterrupt
        return save(self, step, items, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", killed_before_checkpoint_2)
    with pytest.raises(KeyboardInterrupt):
        stage.finetune(config)
    monkeypatch.setattr(Checkpointer, "save", save)
    # the curve is ahead of the last checkpoint: the rerun must recompute iteration 2, not append it twice
    assert finetune_state(config)[0] == 1
    assert [e["iteration"] for e in artifacts.read_curve(config, TASK, 0)] == [0, 1, 2]
    assert not os.path.exists(os.path.join(artifacts.finetune_dir(config, TASK, 0), artifacts.DONE))
    summary = stage.finetune(config)[f"{TASK}/seed0"]
    assert summary["resumed_from"] == 1 and summary["iterations"] == config.ppo.iterations
    assert summary["finetune_sim_steps"] == 0

    (step_a, a), (step_b, b) = finetune_state(tiny(workdir)), finetune_state(config)
    assert step_a == step_b == config.ppo.iterations
    leaves_a, leaves_b = as_numpy(a), as_numpy(b)
    assert len(leaves_a) == len(leaves_b) and all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))
    assert artifacts.read_curve(config, TASK, 0) == artifacts.read_curve(tiny(workdir), TASK, 0)


def test_finetune_split_over_devices_equals_one_device(full_run, tmp_path):
    """`ppo.devices=0` splits the envs over every (fake CPU) device: the same run as on one device, discrete
    outputs exact (curve), parameters up to the reassociation of cross-device sums."""
    workdir, _ = full_run
    runs = {}
    for devices in (1, 0):
        run_dir = tmp_path / f"devices{devices}"
        shutil.copytree(workdir, run_dir, ignore=shutil.ignore_patterns("finetune", "evaluate", "results.*",
                                                                         "success_curves.png"))
        config = tiny(run_dir, seeds=1, devices=devices, n_envs=jax.device_count())
        summary = stage.finetune(config)[f"{TASK}/seed0"]
        assert summary["finetune_sim_steps"] == 0
        runs[devices] = (config, finetune_state(config))
    assert jax.device_count() == 8
    (config_1, (step_1, state_1)), (config_all, (step_all, state_all)) = runs[1], runs[0]
    assert step_1 == step_all == config_1.ppo.iterations
    assert artifacts.read_curve(config_all, TASK, 0) == artifacts.read_curve(config_1, TASK, 0)
    for x, y in zip(as_numpy(state_1), as_numpy(state_all)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_decoded_state_reward_runs_end_to_end_on_the_state_variant(full_run, tmp_path):
    """The latent-decoder reward (``ppo.reward_source='decoded_state'``) on a state-variant world model: the
    main job from the same collection, a standalone transfer diagnostic equal to fine-tuning's, and the
    fine-tuning split over devices equal to one device's."""
    workdir, _ = full_run
    run_dir = tmp_path / "state"
    shutil.copytree(workdir / "collect", run_dir / "collect")
    overrides = ["--config.wm.variant=state", "--config.ppo.reward_source=decoded_state", "--config.seeds=1"]
    cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--config",
           os.path.join(REPO, "experiments", "calvin.py") + ":tiny", "--workdir", str(run_dir), *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0, out.stderr[-3000:]
    results = read_json(run_dir / "results.json")["tasks"][TASK]
    assert 0.0 <= results["finetuned"][0]["imagined_success"] <= 1.0
    points = read_json(run_dir / "finetune" / TASK / "seed0" / "transfer.json")
    assert "real_false_alarms" not in points["finetuned"]  # the classifier's alone
    out = subprocess.run([sys.executable, "-m", "diwa_jax.stages.evaluate", "--workdir", str(run_dir), "--task", TASK,
                          "--policy", "finetuned", "--transfer", "2"], capture_output=True, text=True, cwd=REPO,
                         timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for key, value in points["finetuned"].items():
        assert got[key] == value, key
    curves = []
    for devices in (1, 0):
        copy = tmp_path / f"devices{devices}"
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("finetune", "evaluate", "results.*",
                                                                     "success_curves.png"))
        c = get_config("tiny")
        c.wm.variant, c.ppo.reward_source, c.seeds = "state", "decoded_state", 1
        c.ppo.devices, c.ppo.n_envs = devices, jax.device_count()
        config = configlib.finalize(c, str(copy))
        assert stage.finetune(config)[f"{TASK}/seed0"]["finetune_sim_steps"] == 0
        curves.append(artifacts.read_curve(config, TASK, 0))
    assert curves[0] == curves[1]


def test_a_sweep_shares_the_early_stages_and_each_point_is_a_plain_run(full_run, tmp_path):
    """experiments/ablation.py with two alpha_BC values on the module's early stages: nothing before fine-tuning
    reruns, each point's folder links the shared stages, the point at the module's alpha_BC reproduces the
    module's seed-0 evaluation exactly while the other fine-tunes other parameters, and sweep.json and sweep.md
    report each point's own results."""
    workdir, _ = full_run
    base = tmp_path / "sweep"
    shutil.copytree(workdir, base, ignore=shutil.ignore_patterns("finetune", "evaluate", "results.*", "config.json",
                                                                 "success_curves.png"))
    shared = ("collect", "world_model", "featurize", "policy", "reward")
    markers = {s: (base / s / pipeline.MARKER).read_text() for s in shared}
    default = get_config("tiny").ppo.alpha_bc
    cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--config",
           os.path.join(REPO, "experiments", "ablation.py") + ":tiny", "--workdir", str(base),
           "--config.wm.variant=vision", "--config.sweep.reward_source=()", f"--config.sweep.alpha_bc=({default},0.0)"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0, out.stderr[-3000:]
    for s in shared:
        assert f"[{s}] complete, skipping" in out.stdout and (base / s / pipeline.MARKER).read_text() == markers[s]
    rows = read_json(base / "sweep.json")["runs"]
    assert [r["values"] for r in rows] == [{"ppo.alpha_bc": default}, {"ppo.alpha_bc": 0.0}]
    table = (base / "sweep.md").read_text()
    actors = []
    for row, alpha in zip(rows, (default, 0.0)):
        point = base / "sweep" / f"alpha_bc={alpha}"
        assert all(os.path.islink(point / s) and os.path.samefile(point / s, base / s) for s in shared + ("starts",))
        resolved = read_json(point / "config.json")
        assert resolved["ppo"]["alpha_bc"] == alpha and resolved["sweep"]["alpha_bc"] == []
        mean = read_json(point / "results.json")["mean"]
        assert row["finetuned"] == mean["finetuned"] and row["pretrained"] == mean["pretrained"]
        run = tiny(point, seeds=1, alpha_bc=alpha)
        end = artifacts.read_curve(run, TASK, 0)[-1]  # the periodic list, where a setting may be chosen
        assert row["periodic_real"]["episodes"] == end["eval_episodes"] == run.eval.periodic_episodes
        assert row["periodic_real"]["rate"] == pytest.approx(end["real_success"])
        periodic = with_interval(row["periodic_real"]["rate"], row["periodic_real"]["interval"])
        assert f"| {row['label']} | {periodic} ({end['eval_episodes']}) |" in table
        actors.append(as_numpy(artifacts.load_finetuned_actor(run, TASK, 0)))
    module = read_json(workdir / "results.json")["tasks"][TASK]
    same = read_json(base / "sweep" / f"alpha_bc={default}" / "results.json")["tasks"][TASK]
    assert same["pretrained"]["episode_success"] == module["pretrained"]["episode_success"]
    for key in ("episode_success", "imagined_success"):
        assert same["finetuned"][0][key] == module["finetuned"][0][key], key
    assert not all(np.array_equal(x, y) for x, y in zip(*actors))  # alpha_BC reached the PPO loss
    assert (base / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_device_counts_are_config_errors_naming_the_key(tmp_path):
    """launch.py prints a ConfigError as one line (exit 2): too many devices, or envs that do not split."""
    with pytest.raises(configlib.ConfigError, match=r"config.ppo.devices=99: JAX sees only 8 devices"):
        stage.make_mesh_iteration(tiny(tmp_path, devices=99), None, None, None, None)
    with pytest.raises(configlib.ConfigError, match=r"config.ppo.n_envs = 4 must be a multiple of the number of "
                                                   r"devices \(8\)"):
        config = tiny(tmp_path, devices=0)
        stage.make_mesh_iteration(config, specs.finetune_spec(config, config.tasks[0]), None, None, None)
