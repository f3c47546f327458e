"""The result table's intervals against hand computations and published values."""
import math

import numpy as np
import pytest

from diwa_jax import stats


def test_wilson_interval_equals_the_hand_computation_and_published_values():
    # 5/10 by hand: centre (0.5 + z^2/20) / (1 + z^2/10) = 0.5, half z sqrt(0.025 + z^2/400) / (1 + z^2/10)
    z = stats.Z95
    half = z * math.sqrt(0.025 + z * z / 400) / (1 + z * z / 10)
    assert stats.wilson_interval(5, 10) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-12)
    assert stats.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert stats.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # never the point [0, 0]
    lo, hi = stats.wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(1 - 0.2775, abs=1e-4)
    with pytest.raises(ValueError, match="successes"):
        stats.wilson_interval(11, 10)


def test_wilson_interval_holds_its_point_exactly_at_0_and_n_successes():
    """At 10/10 the formula's upper bound rounds to 0.9999999999999999: the point would lie outside its interval
    (and the success-curve plot refused the negative error bar)."""
    for n in range(1, 301):
        assert stats.wilson_interval(0, n)[0] == 0.0 and stats.wilson_interval(n, n)[1] == 1.0
        for k in range(n + 1):
            lo, hi = stats.wilson_interval(k, n)
            assert lo <= k / n <= hi


def test_success_curves_plot_periodic_evaluations_at_0_and_100_percent(tmp_path):
    from diwa_jax.stages.evaluate import plot_curves
    entries = [{"iteration": i, "imagined_success": s, "real_success": r, "eval_episodes": 10}
               for i, s, r in ((0, None, 0.0), (50, 0.5, 1.0), (100, 0.6, 0.3))]
    plot_curves(str(tmp_path / "curves.png"), {"close_drawer": [entries]})
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_paired_interval_equals_newcombes_published_example():
    # Newcombe (1998), paired proportions, Table II: a=36 both, b=12, c=2, d=0 -> method 10: 0.0569 to 0.3404
    second = [1] * 36 + [1] * 12 + [0] * 2
    first = [1] * 36 + [0] * 12 + [1] * 2
    out = stats.paired_difference(first, second)
    assert out["difference"] == pytest.approx(0.2)
    assert out["interval"] == pytest.approx((0.0569, 0.3404), abs=1e-4)
    assert (out["both"], out["first_only"], out["second_only"], out["neither"]) == (36, 2, 12, 0)


def test_paired_interval_is_narrower_than_unpaired_when_outcomes_agree():
    rng = np.random.default_rng(0)
    first = rng.random(100) < 0.4
    second = first.copy()
    second[np.flatnonzero(~first)[:10]] = True  # ten more successes, every other outcome shared
    out = stats.paired_difference(first, second)
    lo, hi = out["interval"]
    assert lo > 0 and out["difference"] == pytest.approx(0.1)
    (l1, u1), (l2, u2) = stats.wilson_interval(int(first.sum()), 100), stats.wilson_interval(int(second.sum()), 100)
    assert hi - lo < (u2 - l1) - (l2 - u1)  # narrower than the difference of independent intervals
    same_lo, same_hi = stats.paired_difference(second, second)["interval"]  # identical outcomes: about 0
    assert same_lo < 0 < same_hi and same_hi - same_lo < 0.01
    with pytest.raises(ValueError, match="equal-length"):
        stats.paired_difference(first, second[:50])


def test_means_over_tasks_and_seeds_equal_hand_computations():
    out = stats.mean_rate_over_tasks([2, 8], [10, 20])
    z2 = stats.Z95 ** 2
    c1, c2 = (2 + z2 / 2) / (10 + z2), (8 + z2 / 2) / (20 + z2)  # Wilson centres
    se = math.sqrt(c1 * (1 - c1) / 10 + c2 * (1 - c2) / 20) / 2
    assert out["mean"] == pytest.approx(0.3)
    assert out["interval"] == pytest.approx((0.3 - stats.Z95 * se, 0.3 + stats.Z95 * se))
    assert stats.mean_rate_over_tasks([0, 0], [10, 10])["interval"][1] > 0.05  # 0 of n is not certainty
    pairs = [([0, 0, 1, 1], [1, 0, 1, 1]), ([1, 1], [0, 1])]  # differences [1, 0, 0, 0] and [-1, 0]
    out = stats.mean_paired_difference_over_tasks(pairs)
    # with the pseudo-pairs: [1, 0, 0, 0, 1, -1] (mean 1/6, variance 1/2 - 1/36), [-1, 0, 1, -1] (mean -1/4, var 3/4 - 1/16)
    se = math.sqrt((0.5 - 1 / 36) / 4 + (0.75 - 1 / 16) / 2) / 2
    assert out["mean"] == pytest.approx((0.25 - 0.5) / 2)
    assert out["interval"] == pytest.approx((-0.125 - stats.Z95 * se, -0.125 + stats.Z95 * se))
    seeds = stats.over_seeds([0.2, 0.4, 0.6])
    assert seeds == {"mean": pytest.approx(0.4), "std": pytest.approx(0.2), "seeds": 3}
    assert stats.over_seeds([0.3])["std"] == 0.0
