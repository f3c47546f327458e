"""Throughput of imagined rollouts and PPO updates at the model sizes of experiments/calvin.py presets.

    python -m diwa_jax.bench --config experiments/bench.py[:smoke] [--config.ns=50,256 ...]

For each size and number of parallel envs N: the jitted rollout of H chunk steps is compiled (timed apart), run
once to warm up, then timed ``repeats`` times; a figure is the median. The PPO figure is one minibatch step
(clipped loss through the K' fine-tuned log-probs, value loss, both AdamW steps) on B chunk samples. The same run
measures the machine's float32 matrix-product peak (large square jitted matmuls, best median, before and after
the figures) and gives every GFLOP/s figure as a fraction of it. The 1-minute load average is recorded before
every timed run: other processes on the machine slow wall-clock figures, so compare figures taken in one run.

FLOPs count only what the method needs, as the yardstick's ``flops_per_transition(split_cond=True)``: per chunk
step and env, K denoiser evaluations without the cond's share of the first layer, that share once, ``act_steps``
RSSM prior steps and the reward classifier (multiply-adds x 2, elementwise work not counted). The PPO update is
counted as 3x its forward pass (forward, then gradients with respect to activations and weights).

Models are random (initialised at the preset's sizes); imagination reads only the world model's RSSM.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any, Callable

MACHINE_KEYS = ("jax", "backend", "device_kind", "devices", "cpus", "xla_flags")


def rollout_flops(config) -> int:
    """FLOPs of one chunk step of one imagined env (the method's, cond projected once per chunk step)."""
    wm, policy, reward = config.wm, config.policy, config.reward
    latent, stoch = wm.deter + wm.stoch * wm.classes, wm.stoch * wm.classes
    chunk = policy.horizon * policy.action_dim
    per_eval = (chunk + policy.time_dim) * policy.mlp_dim + 2 * policy.mlp_dim ** 2 + policy.mlp_dim * chunk
    denoiser = policy.denoising_steps * per_eval + latent * policy.mlp_dim
    rssm_step = (stoch * wm.hidden + policy.action_dim * wm.hidden + 3 * wm.deter * (wm.hidden + wm.deter)
                 + wm.deter * wm.hidden + wm.hidden * stoch)
    classifier = (latent * reward.embed_hidden + reward.embed_hidden * reward.embed_dim
                  + reward.embed_dim * reward.head_hidden + reward.head_hidden * 2)
    return 2 * (denoiser + policy.act_steps * rssm_step + classifier)


def ppo_flops(config) -> int:
    """FLOPs of one chunk sample in a PPO minibatch step: 3x the forward pass of its K' log-probs and its value."""
    wm, policy, critic = config.wm, config.policy, config.ppo.critic_dim
    latent = wm.deter + wm.stoch * wm.classes
    chunk = policy.horizon * policy.action_dim
    per_eval = (chunk + policy.time_dim) * policy.mlp_dim + 2 * policy.mlp_dim ** 2 + policy.mlp_dim * chunk
    actor = policy.ft_denoising_steps * per_eval + latent * policy.mlp_dim
    value = latent * critic + 2 * critic ** 2 + critic
    return 3 * 2 * (actor + value)


def prepare_runtime(bench) -> None:
    """XLA flags of the run (before JAX starts): ``bench.xla_flags`` and, for a sharded run on a CPU-only
    machine, ``bench.devices`` host devices."""
    flags = [os.environ.get("XLA_FLAGS", ""), bench.xla_flags]
    if bench.devices > 1 and os.environ.get("JAX_PLATFORMS", "cpu") == "cpu":
        flags.append(f"--xla_force_host_platform_device_count={bench.devices}")
    os.environ["XLA_FLAGS"] = " ".join(f for f in flags if f)


def load_average() -> float:
    """The machine's 1-minute load average (runnable processes; above the core count, figures slow down)."""
    return round(os.getloadavg()[0], 2)


def _timed(run: Callable[[int], Any], repeats: int) -> dict:
    """Warm-up run, then ``repeats`` timed runs (``run(r)`` must block until done): wall and process-CPU seconds,
    the load before each."""
    start = time.perf_counter()
    run(0)
    first = time.perf_counter() - start
    wall, cpu, load = [], [], []
    for r in range(1, repeats + 1):
        load.append(load_average())
        start, start_cpu = time.perf_counter(), time.process_time()
        run(r)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"first_run_s": round(first, 4), "times_s": [round(t, 4) for t in wall],
            "median_s": round(statistics.median(wall), 5), "cpu_s": round(statistics.median(cpu), 4), "load": load}


def matmul_peak(sizes, repeats: int) -> dict:
    """Best median GFLOP/s of jitted float32 ``(n, n) @ (n, n)`` products over ``sizes`` (same process, same
    flags as the figures it normalises)."""
    import jax
    import jax.numpy as jnp

    per_size = {}
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        product = jax.jit(jnp.matmul).lower(a, b).compile()
        inner = max(1, int(4e9 // (2 * n ** 3)))  # about 4 GFLOP per timed run

        def run(_):
            for _ in range(inner):
                out = product(a, b)
            out.block_until_ready()

        timing = _timed(run, repeats)
        per_size[n] = round(inner * 2 * n ** 3 / timing["median_s"] / 1e9, 1)
    return {"what": "matmul_peak", "gflops": max(per_size.values()), "per_size": per_size, "load": load_average()}


def experiment_config(bench, size: str, n_envs: int):
    """The experiments/calvin.py preset ``size`` with the benchmark's H, K, K' and N."""
    from experiments.calvin import get_config

    config = get_config(size)
    config.ppo.n_steps, config.ppo.n_envs = bench.H, n_envs
    config.policy.denoising_steps, config.policy.ft_denoising_steps = bench.K, bench.ft_steps
    config.wm.variant = "state"  # imagination reads only the RSSM; no conv towers to initialise
    config.wm.inverse_dynamics_weight = 0.0  # a camera term, as unused by imagination as the towers
    return config


def random_models(config, seed: int):
    """Random frozen models at the config's sizes, and a pool of 64 start latents (tanh deter, one-hot stoch)."""
    import jax
    import jax.numpy as jnp

    from diwa_jax.finetune.imagine import FrozenModels
    from diwa_jax.policy.denoiser import init_denoiser
    from diwa_jax.policy.schedule import make_schedule
    from diwa_jax.reward.classifier import init_classifier
    from diwa_jax.specs import denoiser_spec, reward_spec, world_model_spec
    from diwa_jax.types import Latent
    from diwa_jax.world_model import model as wm

    spec = world_model_spec(config)
    wm_key, classifier_key, actor_key, deter_key, stoch_key = jax.random.split(jax.random.key(seed), 5)
    models = FrozenModels(
        wm={"rssm": jax.jit(lambda k: wm.init_params(k, spec)["rssm"])(wm_key)},
        classifier=init_classifier(classifier_key, reward_spec(config), spec.feature_dim),
        actor_pre=init_denoiser(actor_key, denoiser_spec(config), spec.feature_dim),
        schedule=make_schedule(config.policy.denoising_steps))
    pool = Latent(deter=jnp.tanh(jax.random.normal(deter_key, (64, spec.deter))),
                  stoch=jax.nn.one_hot(jax.random.randint(stoch_key, (64, spec.stoch), 0, spec.classes), spec.classes))
    return models, pool


def _mesh(bench, n: int):
    """The mesh the figure runs on (None: single-device programs); N must split evenly."""
    import jax

    from diwa_jax import distributed

    if bench.devices > jax.device_count():
        raise ValueError(f"bench: config.devices = {bench.devices}, but JAX sees {jax.device_count()} devices")
    if bench.devices == 0 or n % bench.devices:
        return None
    return distributed.make_mesh(jax.devices()[:bench.devices])


def bench_rollout(bench, size: str, n: int) -> dict:
    import jax

    from diwa_jax import distributed
    from diwa_jax.finetune.imagine import imagine_rollout, init_env_state
    from diwa_jax.specs import rollout_spec

    config = experiment_config(bench, size, n)
    spec = rollout_spec(config)
    models, pool = random_models(config, bench.seed)
    env = init_env_state(pool, n, jax.random.key(bench.seed + 1))
    key = jax.random.key(bench.seed + 2)
    mesh = _mesh(bench, n)
    if mesh is None:
        program, args = jax.jit(imagine_rollout, static_argnames="spec"), (models, models.actor_pre, env, pool)
        lower = lambda: program.lower(*args, key, spec=spec)  # noqa: E731
    else:
        rep = distributed.replicated(mesh)
        args = (*distributed.shard((models, models.actor_pre), rep), distributed.shard(env,
                distributed.env_shardings(mesh)), distributed.shard(pool, rep))
        lower = lambda: distributed.sharded_rollout(mesh, spec).lower(*args, key)  # noqa: E731
    start = time.perf_counter()
    compiled = lower().compile()
    compile_s = time.perf_counter() - start
    timing = _timed(lambda r: jax.block_until_ready(compiled(*args, jax.random.fold_in(key, r))), bench.repeats)
    transitions = n * bench.H
    gflops = transitions * rollout_flops(config) / timing["median_s"] / 1e9
    return {"framework": "jax", "what": "rollout", "size": size, "N": n, "H": bench.H, "K": bench.K,
            "devices": 1 if mesh is None else mesh.size, "compile_s": round(compile_s, 2), **timing,
            "chunk_steps_per_s": round(transitions / timing["median_s"], 1),
            "denoise_evals_per_s": round(transitions * bench.K / timing["median_s"], 1),
            "gflops": round(gflops, 1)}


def bench_ppo(bench, size: str) -> dict:
    import jax
    import jax.numpy as jnp

    from diwa_jax import distributed
    from diwa_jax.finetune import agent
    from diwa_jax.specs import finetune_spec

    config = experiment_config(bench, size, max(bench.devices, 1))
    config.ppo.update_epochs, config.ppo.batch_size = 1, bench.ppo_batch  # one minibatch step on the whole batch
    config.ppo.alpha_bc, config.ppo.critic_warmup, config.ppo.target_kl = bench.ppo_alpha_bc, 0, 1e9
    spec = finetune_spec(config, config.tasks[0])
    models, pool = random_models(config, bench.seed)
    state = agent.create_finetune_state(spec, jax.random.key(bench.seed), models.actor_pre, pool)
    b, ft_steps = bench.ppo_batch, config.policy.ft_denoising_steps
    chunk = (config.policy.horizon, config.policy.action_dim)
    keys = jax.random.split(jax.random.key(bench.seed + 3), 6)
    batch = agent.PPOBatch(
        features=jnp.concatenate([jnp.tanh(jax.random.normal(keys[0], (b, config.wm.deter))),
                                  jax.random.bernoulli(keys[1], 1 / config.wm.classes,
                                                       (b, config.wm.stoch * config.wm.classes)).astype(jnp.float32)],
                                 axis=-1),
        chains=jax.random.normal(keys[2], (b, ft_steps + 1, *chunk)),
        old_logprobs=jax.random.normal(keys[3], (b, ft_steps, *chunk)) - 1.0,
        advantages=jax.random.normal(keys[4], (b,)), returns=jax.random.normal(keys[5], (b,)))
    key = jax.random.key(bench.seed + 4)
    mesh = _mesh(bench, b)
    if mesh is None:
        program = jax.jit(agent.ppo_update, static_argnums=0)
        args = (models, state, batch)
        lower = lambda: program.lower(spec, *args, key)  # noqa: E731
    else:
        args = (distributed.shard(models, distributed.replicated(mesh)),
                distributed.shard(state, distributed.state_shardings(state, mesh)),
                distributed.shard(batch, distributed.batch_shardings(mesh)))
        lower = lambda: distributed.sharded_ppo_update(spec, mesh, state).lower(*args, key)  # noqa: E731
    start = time.perf_counter()
    compiled = lower().compile()
    compile_s = time.perf_counter() - start
    timing = _timed(lambda r: jax.block_until_ready(compiled(*args, jax.random.fold_in(key, r))), bench.repeats)
    gflops = b * ppo_flops(config) / timing["median_s"] / 1e9
    return {"framework": "jax", "what": "ppo_update", "size": size, "B": b, "Kft": ft_steps,
            "alpha_bc": bench.ppo_alpha_bc, "devices": 1 if mesh is None else mesh.size,
            "compile_s": round(compile_s, 2), **timing, "samples_per_s": round(b / timing["median_s"], 1),
            "logprob_rows_per_s": round(b * ft_steps / timing["median_s"], 1), "gflops": round(gflops, 1)}


def machine() -> dict:
    import jax

    return {"what": "machine", "jax": jax.__version__, "backend": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind, "devices": jax.device_count(), "cpus": os.cpu_count(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "load": load_average()}


def run(bench, progress: Callable[[dict], None] = lambda row: None) -> list[dict]:
    """Every figure of ``bench`` (experiments/bench.py), after a machine row and the matmul peak. The peak is
    measured before and after the figures (the machine's load changes meanwhile) and the better one is the
    reference of every ``peak_fraction``. ``progress`` sees each row as soon as it is measured."""
    rows = [machine(), matmul_peak(bench.peak_sizes, bench.repeats)]
    for row in rows:
        progress(row)
    for size in bench.sizes:
        for n in bench.ns:
            rows.append(bench_rollout(bench, size, n))
            progress(rows[-1])
        rows.append(bench_ppo(bench, size))
        progress(rows[-1])
    after = matmul_peak(bench.peak_sizes, bench.repeats)
    peak = rows[1]
    peak.update(gflops=max(peak["gflops"], after["gflops"]), per_size_after=after["per_size"], load_after=after["load"])
    for row in rows[2:]:
        row["peak_fraction"] = round(row["gflops"] / peak["gflops"], 3)
    return rows


def table(rows: list[dict]) -> str:
    """A markdown table of the rollout and PPO figures."""
    lines = ["| size | figure | N or B | devices | compile s | median s | chunk-steps/s | denoiser evals/s | "
             "GFLOP/s | of peak | load |", "|---" * 11 + "|"]
    for row in rows:
        if row.get("framework") != "jax":
            continue
        rollout = row["what"] == "rollout"
        lines.append(f"| {row['size']} | {row['what']} | {row['N'] if rollout else row['B']} | {row['devices']} | "
                     f"{row['compile_s']} | {row['median_s']:.3f} | "
                     f"{row['chunk_steps_per_s'] if rollout else '-'} | {row['denoise_evals_per_s'] if rollout else '-'} | "
                     f"{row['gflops']} | {100 * row['peak_fraction']:.0f}% | {max(row['load'])} |")
    return "\n".join(lines)


def emitter(path: str) -> Callable[[dict], None]:
    """Print each row as a JSON line (and append it to ``path`` if set)."""
    def emit(row: dict) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if path:
            with open(path, "a") as f:
                f.write(line + "\n")

    return emit


def progress_line(row: dict) -> None:
    """One short line per measured row, on stderr (the JSON lines follow at the end, with the peak fractions)."""
    keys = ("what", "size", "N", "B", "gflops", "median_s", "chunk_steps_per_s", "load")
    print("# " + " ".join(f"{k}={row[k]}" for k in keys if k in row), file=sys.stderr, flush=True)


def main(bench) -> list[dict]:
    """Run ``bench`` (experiments/bench.py): progress on stderr, then every row as a JSON line and a table."""
    prepare_runtime(bench)
    rows = run(bench, progress_line)
    emit = emitter(bench.out)
    for row in rows:
        emit(row)
    peak = rows[1]
    print(f"\nfloat32 matmul peak {peak['gflops']} GFLOP/s (before {peak['per_size']}, after "
          f"{peak['per_size_after']})\n{table(rows)}", flush=True)
    return rows


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", "experiments/bench.py", "benchmark config file[:preset]")
    flags.FLAGS(sys.argv)
    main(_CONFIG.value)
