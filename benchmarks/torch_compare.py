"""diwa-jax side by side with the PyTorch yardstick (../shared/reference/bench_torch.py), in one run.

    pip install -e .[bench]        # or any interpreter with torch==2.13.0: --config.torch.python=PATH
    python benchmarks/torch_compare.py --config experiments/bench.py [--config.ns=50,256 ...]

Runs diwa_jax.bench (JAX figures, this process), then the yardstick as a subprocess at paper sizes with the same
H, K, K', N and PPO batch (``--paper --ns ... --ppo-bs B`` plus ``config.torch.flags``, by default
``--diwa-faithful``: the work the original spends), and prints both tables and the ratios JAX / torch: rollout
chunk-steps/s, and PPO update seconds torch / JAX. This runner and the yardstick need torch; diwa_jax does not.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from diwa_jax import bench as jax_bench  # noqa: E402

YARDSTICK_SIZE = "paper"  # the yardstick's --paper sizes; it has no others


def yardstick_command(bench) -> list[str]:
    torch = bench.torch
    command = [torch.python, torch.script, "--paper", "--ns", ",".join(map(str, torch.ns)), "--H", str(bench.H),
               "--K", str(bench.K), "--Kft", str(bench.ft_steps), "--repeats", str(torch.repeats),
               "--ppo-bs", str(bench.ppo_batch), "--ppo-repeats", str(torch.repeats), *torch.flags]
    return command + (["--threads", str(torch.threads)] if torch.threads else [])


def run_yardstick(bench, emit=lambda row: None) -> list[dict]:
    """The yardstick's JSON lines, each with the load average before and after it was measured."""
    for path, key in ((bench.torch.python, "python"), (bench.torch.script, "script")):
        if not os.path.exists(path):
            raise FileNotFoundError(f"benchmarks/torch_compare.py: config.torch.{key} = {path!r} does not exist "
                                    "(make the torch venv as ../shared/reference/README.md says, or point it there)")
    process = subprocess.Popen(yardstick_command(bench), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rows, other, load_before = [], [], jax_bench.load_average()
    for line in process.stdout:  # one JSON line per configuration, as it finishes
        if not line.startswith("{"):
            other.append(line)
            continue
        row = {**json.loads(line), "load": [load_before, jax_bench.load_average()]}
        rows.append(row)
        emit(row)
        load_before = jax_bench.load_average()
    if process.wait():
        raise RuntimeError(f"yardstick failed (exit {process.returncode}): {''.join(other)[-2000:]}")
    return rows


def ratios(jax_rows: list[dict], torch_rows: list[dict]) -> list[dict]:
    """Per figure measured by both at the yardstick's sizes: JAX speed / torch speed."""
    jax_by = {(r["what"], r.get("N", r.get("B"))): r for r in jax_rows
              if r.get("framework") == "jax" and r["size"] == YARDSTICK_SIZE}
    out = []
    for t in torch_rows:
        j = jax_by.get((t["what"], t.get("N", t.get("B"))))
        if j is None:
            continue
        if t["what"] == "rollout":
            speedup = j["chunk_steps_per_s"] / t["transitions_per_s"]
            out.append({"what": "ratio", "figure": "rollout", "N": t["N"], "faithful": t["faithful"],
                        "jax_chunk_steps_per_s": j["chunk_steps_per_s"],
                        "torch_chunk_steps_per_s": t["transitions_per_s"], "speedup": round(speedup, 2)})
        else:
            speedup = t["median_s"] / j["median_s"]
            out.append({"what": "ratio", "figure": "ppo_update", "B": t["B"], "faithful": t["faithful"],
                        "jax_s": j["median_s"], "torch_s": t["median_s"], "speedup": round(speedup, 2)})
    return out


def ratio_table(rows: list[dict]) -> str:
    lines = ["| figure | N or B | torch as run | JAX | torch | JAX / torch |", "|---" * 6 + "|"]
    for r in rows:
        mode = "original (--diwa-faithful)" if r["faithful"] else "same math, eager"
        if r["figure"] == "rollout":
            lines.append(f"| rollout chunk-steps/s | {r['N']} | {mode} | {r['jax_chunk_steps_per_s']} | "
                         f"{r['torch_chunk_steps_per_s']} | {r['speedup']}x |")
        else:
            lines.append(f"| PPO update s | {r['B']} | {mode} | {r['jax_s']:.3f} | {r['torch_s']:.3f} | "
                         f"{r['speedup']}x |")
    return "\n".join(lines)


def main(bench) -> list[dict]:
    started = time.time()
    jax_rows = jax_bench.main(bench)
    if not bench.torch.enabled:
        return jax_rows
    emit = jax_bench.emitter(bench.out)
    torch_rows = run_yardstick(bench, emit)
    compared = ratios(jax_rows, torch_rows)
    for row in compared:
        emit(row)
    print(f"\nJAX and torch in one run ({time.time() - started:.0f} s)\n{ratio_table(compared)}", flush=True)
    return jax_rows + torch_rows + compared


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", "experiments/bench.py", "benchmark config file[:preset]")
    flags.FLAGS(sys.argv)
    main(_CONFIG.value)
