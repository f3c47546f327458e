"""A small jitted training job used by test_training_loop (run as a subprocess that gets killed).

usage: python tests/_resumable_job.py CKPT_DIR OUT.npy NUM_STEPS [SLEEP_PER_STEP]
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from diwa_jax.checkpoint import Checkpointer
from diwa_jax.training import run_loop

OPT = optax.adam(0.05)


@struct.dataclass
class State:
    step: jnp.ndarray
    params: dict
    opt_state: optax.OptState
    key: jax.Array


def init_state(seed: int = 0) -> State:
    key = jax.random.key(seed)
    k_init, key = jax.random.split(key)
    params = {"w": jax.random.normal(k_init, (4,)), "b": jnp.zeros(())}
    return State(step=jnp.int32(0), params=params, opt_state=OPT.init(params), key=key)


def batch_fn(step: int):
    rng = np.random.default_rng(step)  # a pure function of the step: resumable
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32) + 0.7
    return x, y


@jax.jit
def update(state: State, batch):
    x, y = batch
    key, k_noise = jax.random.split(state.key)

    def loss_fn(p):
        noise = 0.01 * jax.random.normal(k_noise, y.shape)  # uses the carried key
        return jnp.mean((x @ p["w"] + p["b"] - y - noise) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = OPT.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return State(step=state.step + 1, params=params, opt_state=opt_state, key=key), {"loss": loss}


def train(ckpt_dir: str, num_steps: int, sleep: float = 0.0, fail_at: int | None = None) -> State:
    def batches(step):
        if fail_at is not None and step == fail_at:
            raise KeyboardInterrupt("simulated kill")
        if sleep:
            time.sleep(sleep)
        return batch_fn(step)

    with Checkpointer(ckpt_dir, max_to_keep=2) as ck:
        return run_loop(name="job", state=init_state(), update=update, batch_fn=batches,
                        num_steps=num_steps, checkpointer=ck, log_every=5, ckpt_every=5,
                        show_progress=False)


if __name__ == "__main__":
    ckpt, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sleep = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    final = train(ckpt, n, sleep)
    np.save(out, np.concatenate([np.asarray(final.params["w"]), [np.asarray(final.params["b"])]]))
