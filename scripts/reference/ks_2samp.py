# Reference values for tests in src/stats/ks.rs: scipy 1.17.1, scipy.stats.ks_2samp(a, b) (two-sided, auto).
# Sample k of a case: x_i = ((i*a + c) % m) / m + shift, i = 0..n-1 (integer arithmetic, exact in both languages).
import numpy as np
from scipy.stats import ks_2samp, kstwo
from scipy.special import smirnov
def sample(n, a, c, m, shift):
    i = np.arange(n, dtype=np.int64)
    return ((i * a + c) % m).astype(np.float64) / m + shift
cases = [
  ("ties_unequal",      (8, 3, 1, 5, 0.0),        (5, 2, 0, 7, 0.1)),
  ("equal_50",          (50, 37, 3, 101, 0.0),    (50, 41, 5, 103, 0.05)),
  ("unequal_300_200",   (300, 97, 1, 1009, 0.0),  (200, 89, 7, 997, 0.08)),
  ("ties_heavy",        (400, 13, 0, 20, 0.0),    (350, 7, 3, 20, 0.0)),
  ("exact_10000_10000", (10000, 7919, 11, 10007, 0.0), (10000, 6007, 5, 10009, 0.01)),
  ("asymp_10000_10001", (10000, 7919, 11, 10007, 0.0), (10001, 6007, 5, 10009, 0.01)),
  ("exact_9999_10000",  (9999, 7919, 11, 10007, 0.0), (10000, 6007, 5, 10009, 0.01)),
  ("tiny_p_exact",      (2000, 733, 1, 2003, 0.0),  (3000, 1223, 2, 3001, 0.3)),
  ("tiny_p_asymp",      (20000, 7919, 1, 20011, 0.0), (30000, 12007, 2, 30011, 0.05)),
  ("asymp_small_n",     (20000, 7919, 1, 20011, 0.0), (100, 37, 2, 101, 0.08)),
  ("asymp_small_n_b",   (20000, 7919, 1, 20011, 0.0), (120, 37, 2, 127, 0.03)),
  ("asymp_dmtw",        (15000, 7919, 1, 15013, 0.0), (15000, 12007, 2, 15017, 0.002)),
  ("asymp_pelz_1m",     (1000000, 999983, 1, 1000003, 0.0), (1000000, 700001, 2, 1000033, 0.0)),
  ("asymp_drift_1m",    (1000000, 999983, 1, 1000003, 0.0), (1000000, 700001, 2, 1000033, 0.02)),
]
for name, s1, s2 in cases:
    r = ks_2samp(sample(*s1), sample(*s2))
    print(f'        ("{name}", {s1}, {s2}, {float(r.statistic)!r}, {float(r.pvalue)!r}),'.replace("(", "(", 1))
print("# kstwo.sf / smirnov")
for n, x in [(100, 0.05), (100, 0.12), (100, 0.2), (120, 0.13), (500000, 0.0012), (500000, 0.003), (5000, 0.01), (5000, 0.03), (1000, 0.7), (2000000, 0.001)]:
    print(f"        ({n}, {x!r}, {float(kstwo.sf(x, n))!r}, {float(smirnov(n, x))!r}),")
