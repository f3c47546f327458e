"""Stride-2 VALID convolutions as matrix products: XLA:CPU runs these (and their gradients) much faster than
its convolutions at the world model's small channel counts.

``conv2d_s2`` equals ``flax.linen.Conv(strides=2, padding="VALID")`` for even kernels and
``conv_transpose2d_s2`` equals ``flax.linen.ConvTranspose(strides=2, padding="VALID")`` (values and
gradients, same kernel layout ``(k, k, in, out)``), with about the same multiply-adds:

- conv: a stride-2 kernel of size 2m is a stride-1 kernel of size m over the space-to-depth image (2x2
  pixel blocks as channels), so the output is one product of the m*m shifted block views with the kernel.
- transposed conv: each output phase (row and column parity) is a stride-1 conv of the input with
  every other kernel row and column, so the four phases are one product of the input's m*m shifted
  views with the phase kernels, interleaved afterwards (depth-to-space). Odd kernels get a zero row and
  column so both phases have m = (k + 1) // 2 taps; a 1x1 input is just its product with the kernel.
"""
import jax.numpy as jnp
from jax import lax


def _space_to_depth(x: jnp.ndarray) -> jnp.ndarray:
    """(N, 2H, 2W, C) -> (N, H, W, 2 * 2 * C), channel order (row parity, column parity, C)."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // 2, 2, w // 2, 2, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4 * c)


def conv2d_s2(x: jnp.ndarray, kernel: jnp.ndarray, bias: jnp.ndarray | None = None) -> jnp.ndarray:
    """(N, H, W, C) * kernel (2m, 2m, C, O), stride 2, VALID -> (N, (H - 2m) // 2 + 1, ..., O)."""
    k, k2, c, o = kernel.shape
    if k != k2 or k % 2:
        raise ValueError(f"conv2d_s2: kernel {kernel.shape} must be square with an even size")
    m = k // 2
    out_h, out_w = (x.shape[1] - k) // 2 + 1, (x.shape[2] - k) // 2 + 1
    # The pixels the VALID windows read: 2 * (out + m - 1) rows and columns.
    blocks = _space_to_depth(x[:, :2 * (out_h + m - 1), :2 * (out_w + m - 1)])
    patches = jnp.concatenate([blocks[:, u:u + out_h, v:v + out_w] for u in range(m) for v in range(m)], axis=-1)
    # kernel[2u + a, 2v + b, c] -> row (u, v, a, b, c) of the patch layout
    weights = kernel.reshape(m, 2, m, 2, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(m * m * 4 * c, o)
    out = lax.dot_general(patches, weights, (((3,), (0,)), ((), ())))
    return out if bias is None else out + bias


def conv_transpose2d_s2(x: jnp.ndarray, kernel: jnp.ndarray, bias: jnp.ndarray | None = None) -> jnp.ndarray:
    """(N, H, W, C) with kernel (k, k, C, O), stride 2, VALID, flax's unflipped kernel convention
    (input pixel i adds ``x[i] * kernel[k - 1 - a]`` to output ``2 i + a``) -> (N, 2 (H - 1) + k, ..., O)."""
    k, k2, c, o = kernel.shape
    if k != k2:
        raise ValueError(f"conv_transpose2d_s2: kernel {kernel.shape} must be square")
    n, h, w, _ = x.shape
    flipped = kernel[::-1, ::-1]
    if h == w == 1:  # one input pixel: the output is its product with the whole kernel
        out = lax.dot_general(x[:, 0, 0], flipped, (((1,), (2,)), ((), ())))
        return out if bias is None else out + bias
    m = (k + 1) // 2  # kernel rows per output phase
    if k % 2:  # a zero last row/column gives both phases m rows
        flipped = jnp.pad(flipped, ((0, 1), (0, 1), (0, 0), (0, 0)))
    # Output 2 p + r = sum over v < m of input row p + v - (m - 1) times flipped row 2 (m - 1 - v) + r.
    weights = flipped.reshape(m, 2, m, 2, c, o)[::-1, :, ::-1].transpose(0, 2, 4, 1, 3, 5).reshape(m * m * c, 4 * o)
    padded = jnp.pad(x, ((0, 0), (m - 1, m - 1), (m - 1, m - 1), (0, 0)))
    rows, cols = h + m - 1, w + m - 1  # per output phase
    patches = jnp.concatenate([padded[:, v:v + rows, u:u + cols] for v in range(m) for u in range(m)], axis=-1)
    phases = lax.dot_general(patches, weights, (((3,), (0,)), ((), ()))).reshape(n, rows, cols, 2, 2, o)
    out = phases.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * rows, 2 * cols, o)[:, :2 * (h - 1) + k, :2 * (w - 1) + k]
    return out if bias is None else out + bias
