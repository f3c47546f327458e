"""Adding a task is one file (tests/toy_task.py: its predicate and start sampler, registered in front of every
other task), and it changes nothing about the others: on the same tiny data set and world model, the stages
after collection run for two tasks without the new one registered, and for the new one plus the two with it
registered first, give the two tasks bit-identical policies, classifiers, fine-tuned policies, curves and
evaluation episodes."""
import importlib
import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest

from diwa_jax import artifacts
from diwa_jax import config as configlib
from diwa_jax import pipeline
from diwa_jax.data.calvin_format import CalvinSplit
from diwa_jax.envs import tasks
from experiments.calvin import get_config

TOY = "nudge_slider_left"
OTHERS = ("move_slider_left", "turn_off_led")  # tasks the tiny play data holds in both splits
AFTER_COLLECT = tuple(n for n in pipeline.STAGE_NAMES if n != "collect")
TASK_FREE = ("world_model", "featurize")  # the same data gives the same world model and features


def _register_toy():
    module = importlib.import_module("tests.toy_task")  # registers the task, as a user's import would
    assert tasks.names()[0] == TOY and "tests.toy_task" in tasks.modules()
    return module


def _unregister_toy():
    tasks.unregister(TOY)
    sys.modules.pop("tests.toy_task", None)


def _config(workdir, data, task_list):
    c = get_config("tiny")
    c.tasks = task_list
    c.data.path = data
    return configlib.finalize(c, str(workdir))


def _results(config):
    with open(artifacts.workdir_file(config, "results.json")) as f:
        return json.load(f)


def _without_wall_times(entry):
    if isinstance(entry, dict):
        return {k: _without_wall_times(v) for k, v in entry.items() if "wall_time" not in k}
    if isinstance(entry, list):
        return [_without_wall_times(v) for v in entry]
    return entry


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("add_task")
    _register_toy()
    try:
        collecting = configlib.finalize(get_config("tiny"), str(root / "collect_run"))
        pipeline.run(collecting, ["collect"])  # the workers label the toy task too (they import its module)
        data = collecting.derived.data_dir
        with_toy = _config(root / "with_toy", data, (TOY,) + OTHERS)
        pipeline.run(with_toy, AFTER_COLLECT)
    finally:
        _unregister_toy()
    without = _config(root / "without", data, OTHERS)
    for stage in (s for s in pipeline.STAGES if s.name in TASK_FREE):  # the run below finds them complete
        assert pipeline.fingerprint(without, stage) == pipeline.fingerprint(with_toy, stage)
        shutil.copytree(artifacts.stage_dir(with_toy, stage.name), artifacts.stage_dir(without, stage.name))
    pipeline.run(without, AFTER_COLLECT)
    return data, with_toy, without


def test_the_new_task_runs_every_stage_after_collection(runs):
    data, with_toy, _ = runs
    split = CalvinSplit(f"{data}/training")
    assert TOY in split.annotations().tasks  # labelled by play collection without a skill
    toy = _results(with_toy)["tasks"][TOY]
    assert toy["pretrained"]["episodes"] == with_toy.eval.episodes
    assert os.path.isdir(artifacts.task_dir(with_toy, "reward", TOY))


@pytest.mark.parametrize("task", OTHERS)
def test_registering_a_task_first_leaves_the_others_bit_identical(runs, task):
    _, with_toy, without = runs
    for load in (lambda c: artifacts.load_policy(c, task)[1], lambda c: artifacts.load_reward(c, task),
                 lambda c: artifacts.load_finetuned_actor(c, task, 0)):
        jax.tree_util.tree_map(np.testing.assert_array_equal, load(with_toy), load(without))
    assert artifacts.read_curve(with_toy, task, 0) == artifacts.read_curve(without, task, 0)
    assert (_without_wall_times(_results(with_toy)["tasks"][task])
            == _without_wall_times(_results(without)["tasks"][task]))
