"""The alpha_BC x reward-source ablation (the paper's Figure S.3): fine-tune and evaluate one run per setting.

Usage: ``python launch.py --config experiments/ablation.py[:preset] --workdir runs/NAME``

The settings of experiments/calvin.py's preset (default ``quick``) with ``config.sweep`` set: every combination
of the swept values is one run; the world model, policies and classifiers are trained once and shared, every run
is evaluated on the same final start lists (diwa_jax/sweep.py). ``sweep.md`` and ``sweep.png`` in the workdir
compare real with imagined success per run. The world model is the hybrid variant, whose state head the
decoded-state reward reads; the tasks are those the paper tuned alpha_BC on. Override anything, e.g.
``--config.sweep.alpha_bc="(0.0,0.05)" --config.sweep.reward_source="('classifier',)"``.
"""
import ml_collections

from experiments import calvin

PRESETS = calvin.PRESETS


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = calvin.get_config(preset or "quick")
    c.wm.variant = "hybrid"
    c.sweep.alpha_bc = (0.0, 0.025, 0.05, 0.1, 0.5)
    c.sweep.reward_source = ("classifier", "decoded_state")
    if c.preset != "tiny":  # the tiny preset keeps its one task
        c.tasks = ("open_drawer", "close_drawer", "turn_on_led")  # the paper: 0.1, 0.025, 0.025 beat 0.05 on these
    return c
