//! Significance tests the gate uses to tell a regression from noise: Fisher's exact test on
//! pass counts and the Mann–Whitney U test on measurements, both one-sided.
//!
//! Pure arithmetic, written out here rather than taken from a crate: both tests are short, and
//! the table tests below hold them to SciPy's answers (`scripts/stats-table.py`). Everything
//! is computed in logarithms or exact integers, so counts in the hundreds of thousands neither
//! overflow nor underflow.

/// Which way the one-sided alternative hypothesis points, for the first sample (the release
/// under test) against the second (the baseline), as SciPy's `alternative` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alternative {
    /// The first sample's pass rate (or values) is lower than the second's.
    Less,
    /// The first sample's pass rate (or values) is higher than the second's.
    Greater,
}

/// One-sided Fisher's exact test on the 2×2 table `[[a, b], [c, d]]`: rows are the two
/// samples, columns passed and failed (`[[current passed, current failed], [baseline passed,
/// baseline failed]]`). Returns the p-value: the probability, with the margins fixed, of a
/// table at least as extreme as this one in the direction of `alternative` (with
/// [`Alternative::Less`], that the first row passes this rarely or more rarely by chance).
///
/// Like SciPy's `fisher_exact`, a table with an empty row or column (no sample on one side, or
/// not a single pass or failure anywhere) says nothing: its p-value is 1.
pub fn fisher_exact(table: [[u64; 2]; 2], alternative: Alternative) -> f64 {
    let [[a, b], [c, d]] = table;
    let (row, col) = (a + b, a + c);
    if row == 0 || c + d == 0 || col == 0 || b + d == 0 {
        return 1.0;
    }
    let total = a + b + c + d;
    // The top-left cell is hypergeometric: `row` draws from `total`, of which `col` pass.
    let lowest = row.saturating_sub(total - col);
    let highest = row.min(col);
    let (from, to) = match alternative {
        Alternative::Less => (lowest, a),
        Alternative::Greater => (a, highest),
    };
    let ln_all = ln_choose(total, row);
    let terms = (from..=to)
        .map(|x| ln_choose(col, x) + ln_choose(total - col, row - x) - ln_all)
        .collect::<Vec<f64>>();
    log_sum_exp(&terms).exp().clamp(0.0, 1.0)
}

/// The result of a Mann–Whitney U test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RankTest {
    /// U of the first sample: how many (first, second) pairs have the first value larger,
    /// ties counting one half (SciPy's `statistic`).
    pub u: f64,
    /// The one-sided p-value.
    pub p: f64,
    /// Whether `p` comes from the exact distribution of U rather than the normal
    /// approximation.
    pub exact: bool,
}

/// Largest `n1 * n2` for which [`mann_whitney_u`] computes the exact distribution (its
/// table of counts has `n1 * n2 + 1` entries).
const EXACT_MAX_PAIRS: usize = 1 << 20;

/// The smaller sample size up to which [`mann_whitney_u`] uses the exact distribution when
/// there are no ties (SciPy's `method="auto"` rule).
const EXACT_MAX_SMALLER: usize = 8;

/// One-sided Mann–Whitney U test of `first` against `second`: with [`Alternative::Less`], the
/// p-value of "values of `first` tend to be smaller than those of `second`".
///
/// Chooses its method as SciPy's `mannwhitneyu(..., method="auto")` does: the exact
/// distribution of U when there are no ties and one sample has at most 8 values (and the
/// pair count is at most 2^20, where SciPy would still be exact); otherwise the normal
/// approximation with the tie correction and the continuity correction. A sample without
/// values gives U 0 and p-value 1 (SciPy answers NaN): no evidence of any difference.
pub fn mann_whitney_u(first: &[f64], second: &[f64], alternative: Alternative) -> RankTest {
    let (n1, n2) = (first.len(), second.len());
    if n1 == 0 || n2 == 0 {
        return RankTest {
            u: 0.0,
            p: 1.0,
            exact: false,
        };
    }
    let (rank_sum, ties) = rank_sum_of_first(first, second);
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let u1 = rank_sum - n1f * (n1f + 1.0) / 2.0;
    // The upper tail of the statistic that grows in the alternative's direction.
    let u = match alternative {
        Alternative::Greater => u1,
        Alternative::Less => n1f * n2f - u1,
    };
    let exact = ties.is_empty() && n1.min(n2) <= EXACT_MAX_SMALLER && n1 * n2 <= EXACT_MAX_PAIRS;
    let exact_p = if exact {
        // Without ties U is a whole number.
        exact_u_sf(u.round() as usize, n1, n2)
    } else {
        None
    };
    match exact_p {
        Some(p) => RankTest {
            u: u1,
            p,
            exact: true,
        },
        None => RankTest {
            u: u1,
            p: asymptotic_u_sf(u, n1, n2, &ties),
            exact: false,
        },
    }
}

/// The sum of the ranks of `first` in both samples together (ties take their average rank),
/// and the size of every group of tied values.
fn rank_sum_of_first(first: &[f64], second: &[f64]) -> (f64, Vec<usize>) {
    let mut all: Vec<(f64, bool)> = first
        .iter()
        .map(|v| (*v, true))
        .chain(second.iter().map(|v| (*v, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut rank_sum = 0.0;
    let mut ties = Vec::new();
    let mut start = 0;
    while start < all.len() {
        let end = start
            + all[start..]
                .iter()
                .take_while(|(v, _)| v.total_cmp(&all[start].0).is_eq())
                .count();
        // Ranks start+1..=end, averaged.
        let rank = (start + 1 + end) as f64 / 2.0;
        let n_first = all[start..end].iter().filter(|(_, f)| *f).count();
        rank_sum += rank * n_first as f64;
        if end - start > 1 {
            ties.push(end - start);
        }
        start = end;
    }
    (rank_sum, ties)
}

/// P(U ≥ `k`) under the exact null distribution of U for samples of `n1` and `n2` values
/// without ties; `None` when the counts would not fit the integers used.
///
/// The number of arrangements giving each U is a coefficient of the Gaussian binomial
/// [n1 + n2 choose m]_q (m the smaller size), built as the product over i = 1..=m of
/// (1 - q^(n + i)) / (1 - q^i), exactly, in integers.
fn exact_u_sf(k: usize, n1: usize, n2: usize) -> Option<f64> {
    let (m, n) = (n1.min(n2), n1.max(n2));
    let mut counts: Vec<i128> = vec![1];
    for i in 1..=m {
        let a = n + i;
        let degree = counts.len() - 1 + n;
        let mut next = vec![0i128; degree + 1 + i];
        // Multiply by (1 - q^a): its degree is at most that of the quotient plus i.
        for (power, count) in counts.iter().enumerate() {
            next[power] = next[power].checked_add(*count)?;
            next[power + a] = next[power + a].checked_sub(*count)?;
        }
        // Divide by (1 - q^i): the quotient is a polynomial, so the running sum ends in zeros.
        for power in i..next.len() {
            next[power] = next[power].checked_add(next[power - i])?;
        }
        next.truncate(degree + 1);
        counts = next;
    }
    let total: i128 = counts
        .iter()
        .try_fold(0i128, |sum, c| sum.checked_add(*c))?;
    let tail: i128 = counts
        .get(k..)
        .unwrap_or_default()
        .iter()
        .try_fold(0i128, |sum, c| sum.checked_add(*c))?;
    Some((tail as f64 / total as f64).clamp(0.0, 1.0))
}

/// P(U ≥ `u`) by the normal approximation with the tie correction (`ties`: the size of each
/// group of tied values) and the continuity correction, as SciPy's `method="asymptotic"`.
fn asymptotic_u_sf(u: f64, n1: usize, n2: usize, ties: &[usize]) -> f64 {
    let (n1, n2) = (n1 as f64, n2 as f64);
    let n = n1 + n2;
    let tie_term: f64 = ties
        .iter()
        .map(|t| {
            let t = *t as f64;
            t * t * t - t
        })
        .sum();
    let sd = (n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)))).sqrt();
    let numerator = u - n1 * n2 / 2.0 - 0.5;
    if sd.is_nan() || sd <= 0.0 {
        // Every value is tied: U sits at its mean and nothing is more extreme.
        return if numerator > 0.0 { 0.0 } else { 1.0 };
    }
    normal_sf(numerator / sd)
}

/// `0.0012`, `0.5`, `9.0e-4`: a p-value as people read it.
pub fn format_p(p: f64) -> String {
    if p >= 1e-3 {
        let text = format!("{p:.4}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        format!("{p:.1e}")
    }
}

/// P(Z > z) for a standard normal Z.
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function, to about 1e-13 relative: a series without
/// cancellation below 2.5, a continued fraction above.
fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    let two_over_sqrt_pi = std::f64::consts::FRAC_2_SQRT_PI;
    if x < 2.5 {
        // erf(x) = 2/√π · e^(-x²) · Σ (2x²)^k x / (1·3·…·(2k+1)), every term positive.
        let (mut term, mut sum) = (x, x);
        for k in 1..200 {
            term *= 2.0 * x * x / (2 * k + 1) as f64;
            sum += term;
            if term < sum * 1e-17 {
                break;
            }
        }
        return 1.0 - two_over_sqrt_pi * (-x * x).exp() * sum;
    }
    if x > 27.0 {
        return 0.0;
    }
    // erfc(x) = e^(-x²)/√π / (x + (1/2)/(x + 1/(x + (3/2)/(x + …)))), by Lentz's method.
    let tiny = 1e-300;
    let mut f = x;
    let (mut c, mut d) = (x, 0.0);
    for k in 1..1000 {
        let a = k as f64 / 2.0;
        d = x + a * d;
        d = if d.abs() < tiny { 1.0 / tiny } else { 1.0 / d };
        c = x + a / c;
        if c.abs() < tiny {
            c = tiny;
        }
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    two_over_sqrt_pi / 2.0 * (-x * x).exp() / f
}

/// ln C(n, k), written so that large counts lose no precision to cancellation: exact sums for
/// a small side, Stirling's series with its error term otherwise.
fn ln_choose(n: u64, k: u64) -> f64 {
    if k > n {
        return f64::NEG_INFINITY;
    }
    let small = k.min(n - k);
    if small < 16 {
        return (1..=small)
            .map(|i| ((n - small + i) as f64 / i as f64).ln())
            .sum();
    }
    let (n, k, m) = (n as f64, k as f64, (n - k) as f64);
    // ln n! = (n + 1/2) ln n - n + ln √(2π) + stirling_error(n), and n = k + m.
    k * (n / k).ln() + m * (n / m).ln() + 0.5 * (n / (k * m)).ln()
        - 0.5 * (2.0 * std::f64::consts::PI).ln()
        + stirling_error(n)
        - stirling_error(k)
        - stirling_error(m)
}

/// ln n! - ((n + 1/2) ln n - n + ln √(2π)) for n ≥ 16, to double precision.
fn stirling_error(n: f64) -> f64 {
    let n2 = n * n;
    (1.0 / 12.0
        - (1.0 / 360.0 - (1.0 / 1260.0 - (1.0 / 1680.0 - 1.0 / (1188.0 * n2)) / n2) / n2) / n2)
        / n
}

/// ln Σ e^term, without overflow or underflow.
fn log_sum_exp(terms: &[f64]) -> f64 {
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
}

#[cfg(test)]
mod tests {
    //! Expected values from SciPy 1.17.1 (numpy 2.4.6), printed by `scripts/stats-table.py`:
    //! `scipy.stats.fisher_exact([[a, b], [c, d]], alternative=...)` and
    //! `scipy.stats.mannwhitneyu(current, baseline, alternative=..., method=...)`.

    use super::Alternative::{Greater, Less};
    use super::*;

    /// Whether `actual` is within `relative` of `expected` (exactly equal when expected is 0).
    fn close(actual: f64, expected: f64, relative: f64) -> bool {
        (actual - expected).abs() <= relative * expected.abs()
    }

    #[test]
    fn fisher_exact_matches_scipy() {
        // (current passed, current failed, baseline passed, baseline failed, alternative, p)
        let cases: [(u64, u64, u64, u64, Alternative, f64); 20] = [
            (41, 9, 98, 2, Less, 0.0009046868922873036),
            (49, 1, 98, 2, Less, 0.7066932704516597),
            (19, 1, 20, 0, Less, 0.5),
            (95, 5, 90, 10, Less, 0.9477023133194966),
            (30, 20, 25, 25, Less, 0.886177417618429),
            // No failure on either side, every attempt failed on both sides.
            (50, 0, 100, 0, Less, 1.0),
            (0, 50, 0, 100, Less, 1.0),
            (0, 50, 100, 0, Less, 4.968040370318492e-41),
            // A side without samples, and no sample at all.
            (0, 0, 100, 2, Less, 1.0),
            (45, 5, 0, 0, Less, 1.0),
            (0, 0, 0, 0, Less, 1.0),
            (1, 0, 0, 1, Less, 1.0),
            (0, 1, 1, 0, Less, 0.5),
            // Thousands and more.
            (9000, 1000, 9500, 500, Less, 6.39440052364321e-42),
            (4800, 200, 4850, 150, Less, 0.00379402127578671),
            (2000, 3000, 2500, 2500, Less, 5.136881866502121e-24),
            (100000, 50, 100000, 20, Less, 0.0002206743082371524),
            (41, 9, 98, 2, Greater, 0.9999284807094487),
            (95, 5, 90, 10, Greater, 0.14138191518889034),
            (4800, 200, 4850, 150, Greater, 0.9972754754222792),
        ];
        for (a, b, c, d, alternative, expected) in cases {
            let p = fisher_exact([[a, b], [c, d]], alternative);
            assert!(
                close(p, expected, 1e-9),
                "[[{a}, {b}], [{c}, {d}]] {alternative:?}: {p:e}, SciPy {expected:e}"
            );
        }
    }

    /// `base + (i * mul) % modulo` for i in 0..n, as `spread` in `scripts/stats-table.py`:
    /// deterministic values with ties.
    fn spread(n: usize, base: u64, mul: u64, modulo: u64) -> Vec<f64> {
        (0..n as u64)
            .map(|i| (base + (i * mul) % modulo) as f64)
            .collect()
    }

    /// (name, current, baseline, alternative, exact, U, p).
    type RankCase = (
        &'static str,
        Vec<f64>,
        Vec<f64>,
        Alternative,
        bool,
        f64,
        f64,
    );

    #[test]
    fn mann_whitney_u_matches_scipy() {
        let evens: Vec<f64> = (0..20).step_by(2).map(f64::from).collect();
        let odds: Vec<f64> = (1..21).step_by(2).map(f64::from).collect();
        let halves: Vec<f64> = (0..20).map(|v| f64::from(v) + 0.5).collect();
        // (name, current, baseline, alternative, exact, U, p); SciPy `method="auto"`.
        let cases: Vec<RankCase> = vec![
            (
                "small_lower",
                vec![1.1, 2.3, 3.5],
                vec![4.2, 5.0, 6.1, 7.7],
                Less,
                true,
                0.0,
                0.02857142857142857,
            ),
            (
                "interleaved",
                vec![10.0, 12.0, 14.0, 16.0, 18.0],
                vec![11.0, 13.0, 15.0, 17.0, 19.0, 21.0],
                Less,
                true,
                10.0,
                0.21428571428571427,
            ),
            (
                "higher_greater",
                vec![5.0, 6.0, 7.0, 8.0, 9.0],
                vec![1.0, 2.0, 3.0, 4.0],
                Greater,
                true,
                20.0,
                0.007936507936507936,
            ),
            (
                "five_vs_twenty",
                vec![1.0, 2.0, 3.0, 4.0, 5.0],
                halves,
                Less,
                true,
                15.0,
                0.007679277244494635,
            ),
            (
                "ten_vs_ten_auto",
                evens,
                odds,
                Less,
                false,
                45.0,
                0.3668649978481236,
            ),
            (
                "ties",
                vec![1.0, 2.0, 2.0, 3.0, 3.0, 3.0],
                vec![2.0, 3.0, 3.0, 4.0, 4.0, 5.0],
                Less,
                false,
                7.0,
                0.039201467266633955,
            ),
            (
                "all_equal",
                vec![5.0; 4],
                vec![5.0; 5],
                Less,
                false,
                10.0,
                1.0,
            ),
            (
                "membw_30",
                spread(30, 2800, 37, 101),
                spread(30, 2850, 53, 97),
                Less,
                false,
                131.5,
                1.28955501617016e-06,
            ),
            (
                "membw_30_greater",
                spread(30, 2800, 37, 101),
                spread(30, 2850, 53, 97),
                Greater,
                false,
                131.5,
                0.9999988006679057,
            ),
            (
                "huge_2000",
                spread(2000, 2800, 37, 101),
                spread(2500, 2803, 53, 97),
                Less,
                false,
                2451756.5,
                0.13262739108561172,
            ),
            (
                "huge_shifted",
                spread(2000, 2795, 37, 101),
                spread(2500, 2803, 53, 97),
                Less,
                false,
                2208278.5,
                8.107344331425797e-12,
            ),
            (
                "same_huge",
                spread(2000, 2800, 37, 101),
                spread(2000, 2800, 37, 101),
                Less,
                false,
                2000000.0,
                0.5000054623273308,
            ),
        ];
        for (name, current, baseline, alternative, exact, u, p) in cases {
            let test = mann_whitney_u(&current, &baseline, alternative);
            assert_eq!(test.exact, exact, "{name}: {test:?}");
            assert_eq!(test.u, u, "{name}: {test:?}");
            assert!(close(test.p, p, 1e-9), "{name}: {test:?}, SciPy p={p:e}");
        }
    }

    /// The normal approximation on inputs where `auto` would be exact, and the exact
    /// distribution where `auto` would approximate (`method="asymptotic"`, `method="exact"`).
    #[test]
    fn each_mann_whitney_method_matches_scipy() {
        let asymptotic = [
            // small_lower_asymptotic: U2 = 12 of 3 × 4 pairs, no ties.
            (12.0, 3, 4, 0.02591496360895484),
            // interleaved_asymptotic: U2 = 20 of 5 × 6 pairs.
            (20.0, 5, 6, 0.20565689588812947),
        ];
        for (u, n1, n2, p) in asymptotic {
            let sf = asymptotic_u_sf(u, n1, n2, &[]);
            assert!(close(sf, p, 1e-9), "U={u} {n1}×{n2}: {sf:e}, SciPy {p:e}");
        }
        // ten_vs_ten_exact: U2 = 100 - 45.
        let sf = exact_u_sf(55, 10, 10).expect("fits");
        assert!(close(sf, 0.36968217540972964, 1e-12), "{sf:e}");
    }

    #[test]
    fn an_empty_sample_is_no_evidence_either_way() {
        let test = mann_whitney_u(&[], &[1.0, 2.0], Less);
        assert_eq!((test.u, test.p), (0.0, 1.0));
        assert_eq!(fisher_exact([[0, 0], [5, 5]], Less), 1.0);
    }

    #[test]
    fn the_exact_distribution_of_u_is_symmetric_and_sums_to_one() {
        for (n1, n2) in [(1, 1), (3, 4), (8, 8), (2, 30)] {
            assert_eq!(exact_u_sf(0, n1, n2), Some(1.0));
            assert_eq!(exact_u_sf(n1 * n2 + 1, n1, n2), Some(0.0));
            for k in 0..=n1 * n2 {
                let upper = exact_u_sf(k, n1, n2).expect("fits");
                let lower = 1.0 - exact_u_sf(n1 * n2 - k + 1, n1, n2).expect("fits");
                assert!(close(upper, lower, 1e-12), "{n1}×{n2} k={k}");
            }
        }
    }

    proptest::proptest! {
        /// One more failure of the release under test never makes it look less like a
        /// regression; the two one-sided p-values overlap exactly at the observed table.
        #[test]
        fn fisher_p_falls_with_each_failure(a in 0u64..80, b in 0u64..80, c in 0u64..80, d in 0u64..80) {
            let p = fisher_exact([[a, b], [c, d]], Less);
            let worse = fisher_exact([[a, b + 1], [c, d]], Less);
            proptest::prop_assert!((0.0..=1.0).contains(&p));
            proptest::prop_assert!(worse <= p * (1.0 + 1e-12), "{} then {}", p, worse);
            if a + b > 0 && c + d > 0 && a + c > 0 && b + d > 0 {
                let observed = (ln_choose(a + c, a) + ln_choose(b + d, b) - ln_choose(a + b + c + d, a + b)).exp();
                let sum = p + fisher_exact([[a, b], [c, d]], Greater) - observed;
                proptest::prop_assert!((sum - 1.0).abs() < 1e-9, "{}", sum);
            }
        }

        /// Shifting the first sample down never raises the "less" p-value, and the exact and
        /// the approximate p-values stay within a few percent of each other at 8 values a side.
        #[test]
        fn mann_whitney_follows_a_shift(values in proptest::collection::vec(0u32..1_000_000, 16), shift in 0.0f64..5e5) {
            let values: Vec<f64> = values.into_iter().map(|v| f64::from(v) + 0.25).collect();
            let (first, second) = values.split_at(8);
            let shifted: Vec<f64> = first.iter().map(|v| v - shift).collect();
            let before = mann_whitney_u(first, second, Less);
            let after = mann_whitney_u(&shifted, second, Less);
            proptest::prop_assert!(after.p <= before.p * (1.0 + 1e-12), "{:?} then {:?}", before, after);
            if before.exact {
                let u2 = 64.0 - before.u;
                let approximate = asymptotic_u_sf(u2, 8, 8, &[]);
                proptest::prop_assert!((approximate - before.p).abs() < 0.02, "{} vs {}", approximate, before.p);
            }
        }
    }

    #[test]
    fn normal_tail_is_accurate_far_out() {
        // Φ(-z) for z = 0, 1, 3, 8 (SciPy `scipy.stats.norm.sf`).
        for (z, expected) in [
            (0.0, 0.5),
            (1.0, 0.15865525393145707),
            (3.0, 0.0013498980316300933),
            (8.0, 6.22096057427174e-16),
            (-1.0, 0.8413447460685429),
        ] {
            let sf = normal_sf(z);
            assert!(close(sf, expected, 1e-12), "z={z}: {sf:e}");
        }
    }
}
