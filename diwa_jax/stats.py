"""Success-rate statistics of the result table: intervals per task, over tasks and over seeds.

Per task, ``n`` episodes from a fixed start list give a binomial success count: its 95% interval is
Wilson's score interval (good coverage at the small ``n`` and extreme rates evaluation meets, unlike the
normal interval, which collapses to a point at 0 or n successes). Both policies run from the same
starts, so their difference is paired: Newcombe's hybrid score interval for paired proportions (1998,
method 10) uses the two Wilson intervals and the correlation of the outcomes. The mean over tasks is a
mean of independent per-task estimates: its interval is the normal one with the summed per-task
variances, each taken at an adjusted estimate so that a task with 0 or n successes (or no discordant
pair) still carries its uncertainty: a rate's at its Wilson centre, a paired difference's with one
pseudo-pair of each sign added. Over seeds, mean and sample standard deviation (ddof 1), as the paper
reports.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% standard normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a binomial proportion ``successes / n``."""
    if n <= 0:
        raise ValueError(f"wilson_interval: n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: successes must be in [0, {n}], got {successes}")
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # at 0 (n) successes the lower (upper) bound is exactly 0 (1); rounding must not leave the point outside
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == n else min(1.0, centre + half)
    return lower, upper


def paired_difference(first: Sequence[bool], second: Sequence[bool], z: float = Z95) -> dict:
    """``second`` minus ``first`` success rate over the same episodes (episode i of both from start i):
    the difference and Newcombe's paired interval."""
    a, b = np.asarray(first, bool), np.asarray(second, bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_difference: need two equal-length non-empty outcome lists, got {a.shape} and {b.shape}")
    n = a.size
    both, first_only = int(np.sum(a & b)), int(np.sum(a & ~b))
    second_only, neither = int(np.sum(~a & b)), int(np.sum(~a & ~b))
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    l1, u1 = wilson_interval(both + first_only, n, z)
    l2, u2 = wilson_interval(both + second_only, n, z)
    margins = (both + first_only) * (second_only + neither) * (both + second_only) * (first_only + neither)
    phi = (both * neither - first_only * second_only) / math.sqrt(margins) if margins > 0 else 0.0
    diff = p2 - p1
    lower = diff - math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    upper = diff + math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return {"difference": diff, "interval": (max(-1.0, lower), min(1.0, upper)), "n": n,
            "both": both, "first_only": first_only, "second_only": second_only, "neither": neither}


def mean_rate_over_tasks(successes: Sequence[int], ns: Sequence[int], z: float = Z95) -> dict:
    """The unweighted mean of per-task rates and its normal interval (independent tasks; each task's variance
    at its Wilson centre)."""
    k, n = np.asarray(successes, float), np.asarray(ns, float)
    rates = k / n
    centre = (k + z * z / 2) / (n + z * z)
    se = math.sqrt(float(np.sum(centre * (1 - centre) / n))) / len(rates)
    mean = float(np.mean(rates))
    return {"mean": mean, "interval": (max(0.0, mean - z * se), min(1.0, mean + z * se))}


def mean_paired_difference_over_tasks(pairs: Sequence[tuple[Sequence[bool], Sequence[bool]]],
                                      z: float = Z95) -> dict:
    """The mean over tasks of the per-task paired differences (second - first) and its normal interval,
    each task's variance that of its per-episode differences with a +1 and a -1 pseudo-pair added, over n."""
    diffs = [np.asarray(b, float) - np.asarray(a, float) for a, b in pairs]
    means = np.array([d.mean() for d in diffs])
    se = math.sqrt(sum(float(np.append(d, [1.0, -1.0]).var()) / d.size for d in diffs)) / len(diffs)
    mean = float(means.mean())
    return {"mean": mean, "interval": (max(-1.0, mean - z * se), min(1.0, mean + z * se))}


def over_seeds(values: Sequence[float]) -> dict:
    """Mean and sample standard deviation (ddof 1; 0 for one seed) of one number over seeds."""
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "seeds": int(v.size)}
