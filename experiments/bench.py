"""Throughput of imagined rollouts and PPO updates.

    python -m diwa_jax.bench --config experiments/bench.py                # JAX figures
    python benchmarks/torch_compare.py --config experiments/bench.py      # and the PyTorch yardstick, with ratios

Presets: (none) the full table; ``smoke`` seconds-long tiny sizes (tests). Override any field, e.g.
``--config.ns=50,256 --config.sizes=paper``.
"""
import ml_collections

PRESETS = ("full", "smoke")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    preset = preset or "full"
    if preset not in PRESETS:
        raise ValueError(f"experiments/bench.py: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.sizes = ("paper", "quick")  # presets of experiments/calvin.py whose model sizes are measured
    c.ns = (1, 16, 50, 256, 1024)  # parallel imagined envs N
    c.H = 36  # chunk steps per rollout
    c.K = 20  # denoising steps
    c.ft_steps = 10  # K', fine-tuned denoising steps
    c.repeats = 5  # timed runs per figure, after a warm-up run; figures are medians
    c.ppo_batch = 1800  # chunk samples in the timed PPO minibatch step (B * K' log-prob rows)
    c.ppo_alpha_bc = 0.0  # BC regulariser weight in the timed update (the yardstick has none)
    c.peak_sizes = (1024, 2048, 4096)  # square float32 matmuls; the machine's peak is the best median
    c.xla_flags = ""  # appended to XLA_FLAGS before JAX starts
    c.devices = 0  # 0: the single-device programs; k: the sharded ones over k devices (CPU: k host devices)
    c.seed = 0
    c.out = ""  # also append every figure as a JSON line to this file
    # The PyTorch yardstick (benchmarks/torch_compare.py), at paper sizes only (its sizes are fixed).
    c.torch = ml_collections.ConfigDict()
    c.torch.enabled = True
    c.torch.python = ".venv-torch/bin/python"  # an interpreter with torch==2.13.0 (the `bench` extra)
    c.torch.script = "../shared/reference/bench_torch.py"
    c.torch.ns = (1, 16, 50, 256)  # N = 1024 as the original runs it takes about an hour on 2 cores
    c.torch.repeats = 3
    c.torch.threads = 0  # 0: torch's default
    c.torch.flags = ("--diwa-faithful",)  # as the original spends; () gives the same math, plain eager
    if preset == "smoke":
        c.sizes = ("tiny",)
        c.ns = (4,)
        c.H, c.K, c.ft_steps = 3, 6, 3
        c.repeats = 2
        c.ppo_batch = 12
        c.peak_sizes = (256,)
        c.torch.enabled = False
    return c
