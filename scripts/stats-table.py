#!/usr/bin/env python3
"""Prints the expected values of the table tests in domain/src/stats.rs, computed by SciPy.

Run once by hand (`pip install scipy`; python3 scripts/stats-table.py) and paste its output
into the tests; the Rust statistics are checked against an independent implementation, not
against themselves. The inputs here and in the Rust tests must stay the same.

    scipy.stats.fisher_exact([[current_passed, current_failed],
                              [baseline_passed, baseline_failed]], alternative=...)
    scipy.stats.mannwhitneyu(current, baseline, alternative=..., method=...)
"""

import scipy
from scipy import stats

# (current passed, current failed, baseline passed, baseline failed, alternative)
FISHER = [
    (41, 9, 98, 2, "less"),          # a regression (the README example)
    (49, 1, 98, 2, "less"),          # the same rate
    (19, 1, 20, 0, "less"),          # flaky, not significantly worse
    (95, 5, 90, 10, "less"),         # better than the baseline
    (30, 20, 25, 25, "less"),
    (50, 0, 100, 0, "less"),         # no failure on either side
    (0, 50, 0, 100, "less"),         # every attempt failed on both sides
    (0, 50, 100, 0, "less"),         # everything failed now, nothing before
    (0, 0, 100, 2, "less"),          # no current sample
    (45, 5, 0, 0, "less"),           # no baseline sample
    (0, 0, 0, 0, "less"),
    (1, 0, 0, 1, "less"),
    (0, 1, 1, 0, "less"),
    (9000, 1000, 9500, 500, "less"),   # thousands
    (4800, 200, 4850, 150, "less"),
    (2000, 3000, 2500, 2500, "less"),
    (100000, 50, 100000, 20, "less"),
    (41, 9, 98, 2, "greater"),
    (95, 5, 90, 10, "greater"),
    (4800, 200, 4850, 150, "greater"),
]


def spread(n, base, mul, modulo):
    """Deterministic values with ties: base + (i * mul) % modulo for i in 0..n."""
    return [float(base + (i * mul) % modulo) for i in range(n)]


# (name, current, baseline, alternative, method)
MWU = [
    ("small_lower", [1.1, 2.3, 3.5], [4.2, 5.0, 6.1, 7.7], "less", "auto"),
    ("small_lower_asymptotic", [1.1, 2.3, 3.5], [4.2, 5.0, 6.1, 7.7], "less", "asymptotic"),
    ("interleaved", [10, 12, 14, 16, 18], [11, 13, 15, 17, 19, 21], "less", "auto"),
    ("interleaved_asymptotic", [10, 12, 14, 16, 18], [11, 13, 15, 17, 19, 21], "less", "asymptotic"),
    ("higher_greater", [5, 6, 7, 8, 9], [1, 2, 3, 4], "greater", "auto"),
    ("five_vs_twenty", [1, 2, 3, 4, 5], [float(v) + 0.5 for v in range(20)], "less", "auto"),
    ("ten_vs_ten_exact", [float(v) for v in range(0, 20, 2)], [float(v) for v in range(1, 21, 2)], "less", "exact"),
    ("ten_vs_ten_auto", [float(v) for v in range(0, 20, 2)], [float(v) for v in range(1, 21, 2)], "less", "auto"),
    ("ties", [1, 2, 2, 3, 3, 3], [2, 3, 3, 4, 4, 5], "less", "auto"),
    ("all_equal", [5, 5, 5, 5], [5, 5, 5, 5, 5], "less", "auto"),
    ("membw_30", spread(30, 2800, 37, 101), spread(30, 2850, 53, 97), "less", "auto"),
    ("membw_30_greater", spread(30, 2800, 37, 101), spread(30, 2850, 53, 97), "greater", "auto"),
    ("huge_2000", spread(2000, 2800, 37, 101), spread(2500, 2803, 53, 97), "less", "auto"),
    ("huge_shifted", spread(2000, 2795, 37, 101), spread(2500, 2803, 53, 97), "less", "auto"),
    ("same_huge", spread(2000, 2800, 37, 101), spread(2000, 2800, 37, 101), "less", "auto"),
]

print(f"# scipy {scipy.__version__}")
print("# fisher_exact: (current passed, failed, baseline passed, failed, alternative) -> p")
for a, b, c, d, alternative in FISHER:
    p = stats.fisher_exact([[a, b], [c, d]], alternative=alternative).pvalue
    print(f"({a}, {b}, {c}, {d}, {alternative.capitalize()}, {float(p)!r}),")

print("# mannwhitneyu: name, alternative, method -> U1 (of current), p")
for name, x, y, alternative, method in MWU:
    res = stats.mannwhitneyu(x, y, alternative=alternative, method=method)
    print(f"{name}: {alternative} {method} U={float(res.statistic)!r} p={float(res.pvalue)!r}")

# A side without values: SciPy answers NaN; the Rust function answers 1 (no evidence of a
# regression), and the gate never asks with fewer than min-samples values.
res = stats.mannwhitneyu([], [1.0, 2.0], alternative="less")
print(f"empty: U={float(res.statistic)!r} p={float(res.pvalue)!r}")

print("# norm.sf(z): the normal tail the asymptotic method uses")
for z in [0.0, 1.0, 3.0, 8.0, -1.0]:
    print(f"({z!r}, {float(stats.norm.sf(z))!r}),")
