"""World-model training throughput (frames/s = B*T / median seconds per jitted train step).

    python benchmarks/wm_train_speed.py --presets quick,paper [--steps 5] [--batch_size B --seq_len T]

For each preset of experiments/calvin.py: build the train state, compile the train step (timed apart),
run one warm-up step, then time ``--steps`` steps (each blocked until done) on a fixed synthetic batch.
Prints one JSON line per preset. ``--batch_size``/``--seq_len`` override the preset's (0: keep it), e.g. to
fit the paper sizes (50 x 50) on a CPU.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for experiments/ and diwa_jax/

from diwa_jax.specs import world_model_spec  # noqa: E402
from diwa_jax.world_model import model as wm  # noqa: E402
from experiments.calvin import get_config  # noqa: E402


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


def bench_preset(preset: str, variant: str, batch_size: int, seq_len: int, steps: int) -> dict:
    config = get_config(preset)
    config.wm.variant = variant
    cfg, spec = config.wm, world_model_spec(config)
    batch_size, seq_len = batch_size or cfg.batch_size, seq_len or cfg.seq_len
    batch = jax.device_put(synthetic_batch(spec, batch_size, seq_len))
    state = jax.block_until_ready(wm.create_train_state(jax.random.key(0), spec, batch_size))

    start = time.perf_counter()
    train_step = wm.make_train_step(spec).lower(state, batch).compile()
    compile_s = time.perf_counter() - start

    state, metrics = train_step(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = train_step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    device = jax.devices()[0]
    return {
        "bench": "wm_train_speed", "preset": preset, "variant": variant,
        "batch_size": batch_size, "seq_len": seq_len,
        "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "compile_s": round(compile_s, 2), "step_s_median": round(median, 4),
        "step_s": [round(t, 4) for t in times], "frames_per_s": round(batch_size * seq_len / median, 1),
        "loss": float(metrics["loss"]), "backend": jax.default_backend(), "device": device.device_kind,
        "jax": jax.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="quick,paper", help="comma-separated presets of experiments/calvin.py")
    parser.add_argument("--variant", default="vision", choices=("vision", "hybrid", "state"))
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    parser.add_argument("--batch_size", type=int, default=0, help="0: the preset's config.wm.batch_size")
    parser.add_argument("--seq_len", type=int, default=0, help="0: the preset's config.wm.seq_len")
    args = parser.parse_args()
    for preset in args.presets.split(","):
        print(json.dumps(bench_preset(preset, args.variant, args.batch_size, args.seq_len, args.steps)), flush=True)


if __name__ == "__main__":
    main()
