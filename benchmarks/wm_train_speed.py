"""World-model training throughput, side by side with the PyTorch yardstick, in one run.

    python benchmarks/wm_train_speed.py [--sizes quick,paper=4x10] [--steps 5] \
        [--torch_python .venv-torch/bin/python] [--torch_script ../shared/reference/bench_torch_wm.py]

For each size (a preset of experiments/calvin.py, optionally ``=BxT`` for another batch, e.g. the paper
widths with a batch that fits a CPU; the paper's objective, without the inverse-dynamics head, as the
yardstick has it): build the train state, compile the jitted train step (timed apart),
count its FLOPs (XLA's cost analysis of the compiled step), run one warm-up step, then time ``--steps``
steps on a fixed synthetic batch; then the yardstick (``bench_torch_wm.py``, the original's PyTorch step,
a subprocess) at the same widths and batch. The float32 matmul peak is measured in the same process before
and after (``diwa_jax.bench.matmul_peak``; the better one counts). frames/s = B*T / median step seconds.
Prints one JSON line per figure, then a markdown table with the ratio JAX / torch. ``--torch_python ''``
skips the yardstick (diwa_jax itself never needs torch).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo root, for experiments/ and diwa_jax/

from diwa_jax import bench as jax_bench  # noqa: E402
from diwa_jax.specs import world_model_spec  # noqa: E402
from diwa_jax.world_model import model as wm  # noqa: E402
from experiments.calvin import get_config  # noqa: E402

YARDSTICK_SIZES = ("quick", "paper")  # the widths bench_torch_wm.py knows


def synthetic_batch(spec: wm.WorldModelSpec, batch_size: int, seq_len: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    image = (batch_size, seq_len, spec.image_size, spec.image_size, 3)
    reset = rng.random((batch_size, seq_len)) < 0.01
    reset[:, 0] = True
    return {
        "rgb_static": rng.integers(0, 256, image, dtype=np.uint8),
        "rgb_gripper": rng.integers(0, 256, image, dtype=np.uint8),
        "proprio": rng.random((batch_size, seq_len, spec.proprio_dim), dtype=np.float32),
        "state": rng.random((batch_size, seq_len, spec.state_dim), dtype=np.float32),
        "prev_action": rng.uniform(-1, 1, (batch_size, seq_len, spec.action_dim)).astype(np.float32),
        "reset": reset,
    }


def parse_size(text: str) -> tuple[str, int, int]:
    """``quick`` or ``paper=4x10`` -> (preset, batch_size, seq_len); 0 keeps the preset's."""
    preset, _, batch = text.partition("=")
    if not batch:
        return preset, 0, 0
    try:
        batch_size, seq_len = (int(v) for v in batch.split("x"))
    except ValueError:
        raise SystemExit(f"wm_train_speed.py: --sizes entry {text!r}: write PRESET or PRESET=BxT, e.g. paper=4x10")
    return preset, batch_size, seq_len


def bench_jax(preset: str, variant: str, batch_size: int, seq_len: int, steps: int) -> dict:
    config = get_config(preset)
    config.wm.variant = variant
    config.wm.inverse_dynamics_weight = 0.0  # the yardstick's objective (the paper's): the same model
    cfg, spec = config.wm, world_model_spec(config)
    batch_size, seq_len = batch_size or cfg.batch_size, seq_len or cfg.seq_len
    batch = jax.device_put(synthetic_batch(spec, batch_size, seq_len))
    state = jax.block_until_ready(wm.create_train_state(jax.random.key(0), spec, batch_size))

    start = time.perf_counter()
    train_step = wm.make_train_step(spec).lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    cost = train_step.cost_analysis()
    flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost).get("flops", 0.0))

    state, metrics = train_step(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    times, load = [], []
    for _ in range(steps):
        load.append(jax_bench.load_average())
        start = time.perf_counter()
        state, metrics = train_step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "bench": "wm_train_speed", "framework": "jax", "preset": preset, "variant": variant,
        "batch_size": batch_size, "seq_len": seq_len,
        "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "compile_s": round(compile_s, 2), "step_s_median": round(median, 4), "step_s": [round(t, 4) for t in times],
        "frames_per_s": round(batch_size * seq_len / median, 1), "step_gflop": round(flops / 1e9, 3),
        "gflops": round(flops / median / 1e9, 1), "loss": float(metrics["loss"]), "load": load,
        "backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "jax": jax.__version__,
    }


def bench_torch(python: str, script: str, preset: str, batch_size: int, seq_len: int, steps: int) -> dict:
    """The yardstick's JSON line for the same widths and batch (its step FLOPs are taken as JAX's: the same
    model and batch)."""
    for path, flag in ((python, "--torch_python"), (script, "--torch_script")):
        if not os.path.exists(path):
            raise SystemExit(f"wm_train_speed.py: {flag} {path!r} does not exist (make the torch venv as "
                             "../shared/reference/README.md says, or pass --torch_python '' to skip the yardstick)")
    if preset not in YARDSTICK_SIZES:
        raise SystemExit(f"wm_train_speed.py: the yardstick knows the widths {YARDSTICK_SIZES}, not {preset!r}")
    load_before = jax_bench.load_average()
    command = [python, script, "--sizes", preset, "--batch", str(batch_size), "--seq", str(seq_len),
               "--repeats", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"yardstick failed (exit {done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
    return {**json.loads(lines[-1]), "framework": "torch", "preset": preset,
            "load": [load_before, jax_bench.load_average()]}


def table(rows: list[dict], peak: float) -> str:
    lines = ["| size | batch | params | JAX compile s | JAX s/step | JAX frames/s | torch frames/s | JAX / torch | "
             "step GFLOP | JAX GFLOP/s | of peak | load |", "|---" * 12 + "|"]
    for j, t in rows:
        ratio = f"**{j['frames_per_s'] / t['frames_per_s']:.2f}x**" if t else "-"
        load = max(j["load"] + (t["load"] if t else []))
        lines.append(f"| {j['preset']} | {j['batch_size']}x{j['seq_len']} | {j['params']:,} | {j['compile_s']} | "
                     f"{j['step_s_median']:.3f} | {j['frames_per_s']} | {t['frames_per_s'] if t else '-'} | {ratio} | "
                     f"{j['step_gflop']} | {j['gflops']} | {100 * j['gflops'] / peak:.1f}% | {load} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="quick,paper=4x10",
                        help="comma-separated presets of experiments/calvin.py, each optionally =BxT")
    parser.add_argument("--variant", default="vision", choices=("vision", "hybrid", "state"),
                        help="the JAX model's variant (the yardstick is the vision variant)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up), both frameworks")
    parser.add_argument("--torch_python", default=".venv-torch/bin/python",
                        help="an interpreter with torch==2.13.0 (the bench extra); '' skips the yardstick")
    parser.add_argument("--torch_script", default=str(REPO.parent / "shared/reference/bench_torch_wm.py"))
    parser.add_argument("--peak_sizes", default="1024,2048", help="square float32 matmul sizes for the peak")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    peak_sizes = [int(n) for n in args.peak_sizes.split(",")]
    started = time.time()
    machine = jax_bench.machine()
    print(json.dumps(machine), flush=True)
    peak_before = jax_bench.matmul_peak(peak_sizes, 3)
    print(json.dumps(peak_before), flush=True)
    rows = []
    for preset, batch_size, seq_len in sizes:
        j = bench_jax(preset, args.variant, batch_size, seq_len, args.steps)
        print(json.dumps(j), flush=True)
        t = None
        if args.torch_python and args.variant == "vision":
            t = bench_torch(args.torch_python, args.torch_script, preset, j["batch_size"], j["seq_len"], args.steps)
            t["gflops"] = round(j["step_gflop"] / t["step_s_median"], 1)
            print(json.dumps(t), flush=True)
        rows.append((j, t))
    peak_after = jax_bench.matmul_peak(peak_sizes, 3)
    peak = max(peak_before["gflops"], peak_after["gflops"])
    print(json.dumps({**peak_after, "what": "matmul_peak_after", "peak_gflops": peak}), flush=True)
    print(f"\nOne run, {time.time() - started:.0f} s; float32 matmul peak {peak} GFLOP/s (before "
          f"{peak_before['per_size']}, after {peak_after['per_size']}); {machine['cpus']} CPUs, jax {jax.__version__}\n"
          f"{table(rows, peak)}", flush=True)


if __name__ == "__main__":
    main()
