"""The throughput benchmark (diwa_jax/bench.py, benchmarks/torch_compare.py): FLOP counts against the yardstick's
formula, a smoke run whose figures are consistent with their timings (single-device and sharded programs), and
the side-by-side runner on a stand-in yardstick script (JSON lines, arguments, ratios, errors)."""
import importlib.util
import json
import os
import sys

import pytest

from diwa_jax import bench
from experiments.bench import get_config
from tests.conftest import REPO


def _torch_compare():
    spec = importlib.util.spec_from_file_location("torch_compare", os.path.join(REPO, "benchmarks", "torch_compare.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_match_the_yardstick_formula():
    config = bench.experiment_config(get_config(), "paper", 50)
    # ../shared/reference/common.py: flops_per_transition(Cfg(ta=4, wm_steps=4), split_cond=True)
    assert bench.rollout_flops(config) == 104_164_032
    # by hand: 10 fine-tuned evaluations (28 + 16 -> 512, 2 x 512 x 512, 512 -> 28), the 2048 x 512 cond
    # projection, the 2048 -> 256 -> 256 -> 256 -> 1 critic; x2 multiply-adds, x3 forward + backward
    actor = 10 * (44 * 512 + 2 * 512 * 512 + 512 * 28) + 2048 * 512
    assert bench.ppo_flops(config) == 6 * (actor + 2048 * 256 + 2 * 256 * 256 + 256)
    quick = bench.experiment_config(get_config(), "quick", 50)  # deter 256, 16 x 16 stoch, hidden 256, mlp 256
    denoiser = 20 * (44 * 256 + 2 * 256 * 256 + 256 * 28) + 512 * 256
    rssm = 256 * 256 + 7 * 256 + 3 * 256 * (256 + 256) + 256 * 256 + 256 * 256
    assert bench.rollout_flops(quick) == 2 * (denoiser + 4 * rssm + 512 * 256 + 256 * 64 + 64 * 256 + 256 * 2)


@pytest.mark.parametrize("devices", [0, 2], ids=["single-device", "sharded"])
def test_smoke_run_figures_follow_from_their_timings(devices):
    config = get_config("smoke")  # tiny sizes, N = 4, H = 3, K = 6, B = 12
    config.devices = devices
    rows = bench.run(config)
    machine, peak, rollout, ppo = rows
    assert machine["what"] == "machine" and machine["devices"] >= max(devices, 1)
    assert peak["what"] == "matmul_peak" and peak["gflops"] > 0  # the better of the runs before and after the figures
    assert peak["gflops"] == max(*peak["per_size"].values(), *peak["per_size_after"].values())
    tiny = bench.experiment_config(config, "tiny", 4)
    assert (rollout["what"], rollout["N"], rollout["devices"], ppo["B"]) == ("rollout", 4, max(devices, 1), 12)
    assert len(rollout["times_s"]) == len(rollout["load"]) == config.repeats and rollout["compile_s"] > 0
    assert rollout["chunk_steps_per_s"] == pytest.approx(4 * 3 / rollout["median_s"], rel=1e-3)
    assert rollout["denoise_evals_per_s"] == pytest.approx(4 * 3 * 6 / rollout["median_s"], rel=1e-3)
    assert rollout["gflops"] == pytest.approx(12 * bench.rollout_flops(tiny) / rollout["median_s"] / 1e9, abs=0.06)
    assert ppo["gflops"] == pytest.approx(12 * bench.ppo_flops(tiny) / ppo["median_s"] / 1e9, abs=0.06)
    for row in (rollout, ppo):
        assert row["peak_fraction"] == pytest.approx(row["gflops"] / peak["gflops"], abs=2e-3)
        assert min(row["times_s"]) <= row["median_s"] <= max(row["times_s"])
    table = bench.table(rows)
    assert "| tiny | rollout | 4 |" in table and "| tiny | ppo_update | 12 |" in table


FAKE_YARDSTICK = '''
import json, sys
args = sys.argv[1:]
value = lambda flag: args[args.index(flag) + 1]
faithful = "--diwa-faithful" in args
for n in value("--ns").split(","):
    print(json.dumps({"framework": "torch", "what": "rollout", "faithful": faithful, "N": int(n), "median_s": 2.0,
                      "transitions_per_s": int(n) * int(value("--H")) / 2.0, "argv": args}))
print("# a comment line")
print(json.dumps({"framework": "torch", "what": "ppo_update", "faithful": faithful, "B": int(value("--ppo-bs")),
                  "median_s": 1.5}))
'''


def test_torch_compare_runs_the_yardstick_and_computes_ratios(tmp_path):
    torch_compare = _torch_compare()
    script = tmp_path / "fake_bench_torch.py"
    script.write_text(FAKE_YARDSTICK)
    config = get_config()
    config.torch.python, config.torch.script, config.torch.ns = sys.executable, str(script), (16, 50)
    emitted = []
    torch_rows = torch_compare.run_yardstick(config, emitted.append)
    assert emitted == torch_rows and [r["what"] for r in torch_rows] == ["rollout", "rollout", "ppo_update"]
    argv = torch_rows[0]["argv"]
    assert argv[:3] == ["--paper", "--ns", "16,50"] and "--diwa-faithful" in argv
    assert argv[argv.index("--ppo-bs") + 1] == "1800" and argv[argv.index("--Kft") + 1] == "10"
    jax_rows = [{"framework": "jax", "what": "rollout", "size": "paper", "N": 50, "chunk_steps_per_s": 4500.0},
                {"framework": "jax", "what": "rollout", "size": "quick", "N": 16, "chunk_steps_per_s": 1.0},
                {"framework": "jax", "what": "ppo_update", "size": "paper", "B": 1800, "median_s": 0.5}]
    compared = torch_compare.ratios(jax_rows, torch_rows)
    # N = 16 was measured by JAX only at quick sizes: no ratio; N = 50: 4500 / (50 * 36 / 2); PPO: 1.5 s / 0.5 s
    assert [(r["figure"], r["speedup"]) for r in compared] == [("rollout", 5.0), ("ppo_update", 3.0)]
    assert "| rollout chunk-steps/s | 50 | original (--diwa-faithful) | 4500.0 | 900.0 | 5.0x |" in \
        torch_compare.ratio_table(compared)
    json.dumps(compared)  # JSON lines


def test_torch_compare_names_a_missing_interpreter(tmp_path):
    config = get_config()
    config.torch.python = str(tmp_path / "no-venv" / "python")
    with pytest.raises(FileNotFoundError, match="config.torch.python"):
        _torch_compare().run_yardstick(config)
