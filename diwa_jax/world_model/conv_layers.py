"""Stride-2 VALID convolutions as stride-1 convolutions, which XLA:CPU runs much faster (and whose
gradients it runs much faster here) than its strided and transposed convolutions at the world model's small
channel counts.

``conv2d_s2`` equals ``flax.linen.Conv(strides=2, padding="VALID")`` for even kernels and
``conv_transpose2d_s2`` equals ``flax.linen.ConvTranspose(strides=2, padding="VALID")`` (values and
gradients, same kernel layout ``(k, k, in, out)``), with about the same multiply-adds:

- conv: a stride-2 kernel of size 2m is a stride-1 kernel of size m over the space-to-depth image (2x2
  pixel blocks as channels).
- transposed conv: each output phase (row and column parity) is a stride-1 conv of the input with
  every other kernel row and column, so the four phases are one stride-1 conv with the phase kernels as
  output channels, interleaved afterwards (depth-to-space). Odd kernels get a zero row and column so both
  phases have m = (k + 1) // 2 taps; a 1x1 input is just its product with the kernel.

Both go through ``conv2d_valid``, whose kernel gradient on CPU is a sum over small blocks of images of one
product per tap: a block's images and output gradients stay in cache, where XLA's own kernel-gradient
convolution and one product over an im2col matrix both stream many times the input from memory. Other
platforms use XLA's gradient.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
BLOCK_BYTES = 1 << 19  # images per kernel-gradient block: their input and output gradient fit about this


def _conv(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DIMENSIONS)


def _conv_even(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """``_conv`` with odd image sides zero-padded at the far edge and the extra outputs cropped: XLA:CPU's
    convolution runs several times slower on odd-sized images."""
    _, h, w, _ = x.shape
    if not (h % 2 or w % 2):
        return _conv(x, kernel)
    out = _conv(jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))), kernel)
    return out[:, :h - kernel.shape[0] + 1, :w - kernel.shape[1] + 1]


def _kernel_grad_xla(x: jnp.ndarray, dy: jnp.ndarray, kernel_shape: tuple) -> jnp.ndarray:
    _, pullback = jax.vjp(lambda kernel: _conv(x, kernel), jnp.zeros(kernel_shape, x.dtype))
    return pullback(dy)[0]


def _kernel_grad_blocked(x: jnp.ndarray, dy: jnp.ndarray, kernel_shape: tuple) -> jnp.ndarray:
    kh, kw, c, o = kernel_shape
    n, out_h, out_w, _ = dy.shape
    image_bytes = (x[0].size + dy[0].size) * x.dtype.itemsize
    block = max(d for d in range(1, n + 1) if n % d == 0 and (d == 1 or d * image_bytes <= BLOCK_BYTES))

    def add_block(grad, pair):
        xb, dyb = pair
        dy2 = dyb.reshape(-1, o)
        taps = [[xb[:, v:v + out_h, u:u + out_w].reshape(-1, c).T @ dy2 for u in range(kw)] for v in range(kh)]
        return grad + jnp.stack([jnp.stack(row) for row in taps]), None

    blocks = (x.reshape(n // block, block, *x.shape[1:]), dy.reshape(n // block, block, *dy.shape[1:]))
    return lax.scan(add_block, jnp.zeros(kernel_shape, x.dtype), blocks)[0]


@jax.custom_vjp
def conv2d_valid(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """(N, H, W, C) * kernel (kh, kw, C, O), stride 1, VALID -> (N, H - kh + 1, W - kw + 1, O)."""
    return _conv_even(x, kernel)


def _conv2d_valid_fwd(x, kernel):
    return _conv_even(x, kernel), (x, kernel)


def _conv2d_valid_bwd(residuals, dy):
    x, kernel = residuals
    _, pullback = jax.vjp(lambda inputs: _conv_even(inputs, kernel), x)
    kernel_grad = lax.platform_dependent(
        x, dy, cpu=functools.partial(_kernel_grad_blocked, kernel_shape=kernel.shape),
        default=functools.partial(_kernel_grad_xla, kernel_shape=kernel.shape))
    return pullback(dy)[0], kernel_grad


conv2d_valid.defvjp(_conv2d_valid_fwd, _conv2d_valid_bwd)


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
    # kernel[2u + a, 2v + b, c] -> tap (u, v), input channel (a, b, c) of the block image
    out = conv2d_valid(blocks, kernel.reshape(m, 2, m, 2, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(m, m, 4 * c, o))
    return out if bias is None else out + bias


def _pixel_taps(x: jnp.ndarray, taps: jnp.ndarray) -> jnp.ndarray:
    """(N, C) times each tap's (C, O) matrix of ``taps`` (T, C, O) -> (T, N, O), the taps read as stored."""
    return lax.dot_general(jnp.broadcast_to(x, (taps.shape[0], *x.shape)), taps, (((2,), (1,)), ((0,), (0,))))


@jax.custom_vjp
def _single_pixel_taps(x: jnp.ndarray, taps: jnp.ndarray) -> jnp.ndarray:
    return _pixel_taps(x, taps)


def _single_pixel_taps_fwd(x, taps):
    return _pixel_taps(x, taps), (x, taps)


def _single_pixel_taps_bwd(residuals, dy):
    x, taps = residuals
    # The input gradient as a loop of per-tap products with the tap matrices read as stored: XLA's batched
    # product summed over taps, or one contraction over (tap, O), run several times slower on CPU or copy
    # the kernel transposed.
    x_grad = lax.fori_loop(0, taps.shape[0], lambda t, acc: acc + dy[t] @ taps[t].T, jnp.zeros_like(x))
    taps_grad = lax.dot_general(jnp.broadcast_to(x, (taps.shape[0], *x.shape)), dy, (((1,), (1,)), ((0,), (0,))))
    return x_grad, taps_grad


_single_pixel_taps.defvjp(_single_pixel_taps_fwd, _single_pixel_taps_bwd)


def _single_pixel_transpose(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """A transposed conv of one input pixel per image, (N, C) with kernel (k, k, C, O) -> (N, k, k, O): the
    pixel times the flipped kernel, as one product per kernel tap that reads the kernel as it is stored
    (flipping or transposing the large kernel would copy it, forward and backward)."""
    k, _, c, o = kernel.shape
    taps = _single_pixel_taps(x, kernel.reshape(k * k, c, o))  # (k * k, N, O)
    return taps.reshape(k, k, -1, o)[::-1, ::-1].transpose(2, 0, 1, 3)


def conv_transpose2d_s2(x: jnp.ndarray, kernel: jnp.ndarray, bias: jnp.ndarray | None = None) -> jnp.ndarray:
    """(N, H, W, C) with kernel (k, k, C, O), stride 2, VALID, flax's unflipped kernel convention
    (input pixel i adds ``x[i] * kernel[k - 1 - a]`` to output ``2 i + a``) -> (N, 2 (H - 1) + k, ..., O)."""
    k, k2, c, o = kernel.shape
    if k != k2:
        raise ValueError(f"conv_transpose2d_s2: kernel {kernel.shape} must be square")
    n, h, w, _ = x.shape
    if h == w == 1:
        out = _single_pixel_transpose(x[:, 0, 0], kernel)
        return out if bias is None else out + bias
    flipped = kernel[::-1, ::-1]
    m = (k + 1) // 2  # kernel rows per output phase
    if k % 2:  # a zero last row/column gives both phases m rows
        flipped = jnp.pad(flipped, ((0, 1), (0, 1), (0, 0), (0, 0)))
    # Output 2 p + r = sum over v < m of input row p + v - (m - 1) times flipped row 2 (m - 1 - v) + r.
    weights = flipped.reshape(m, 2, m, 2, c, o)[::-1, :, ::-1].transpose(0, 2, 4, 1, 3, 5).reshape(m, m, c, 4 * o)
    padded = jnp.pad(x, ((0, 0), (m - 1, m - 1), (m - 1, m - 1), (0, 0)))
    rows, cols = h + m - 1, w + m - 1  # per output phase
    phases = conv2d_valid(padded, weights).reshape(n, rows, cols, 2, 2, o)
    out = phases.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * rows, 2 * cols, o)[:, :2 * (h - 1) + k, :2 * (w - 1) + k]
    return out if bias is None else out + bias
