# Reference values for src/stats/categorical.rs tests: scipy 1.17.1.
from scipy.stats import chi2_contingency, chi2
for name, table in [
    ("2x4", [[120, 340, 95, 445], [130, 310, 120, 400]]),
    ("2x2_yates", [[30, 70], [45, 55]]),
    ("2x3_small_p", [[5000, 3000, 2000], [3000, 3000, 4000]]),
    ("2x5_equal", [[200, 250, 200, 200, 150], [400, 500, 400, 400, 300]]),
]:
    r = chi2_contingency(table)
    print(f'        ("{name}", &{table}, {float(r.statistic)!r}, {float(r.pvalue)!r}, {int(r.dof)}),')
for x, k in [(3.2, 1), (12.5, 4), (0.4, 3), (250.0, 2), (1e-3, 5), (40.0, 30)]:
    print(f"        ({x!r}, {k}, {float(chi2.sf(x, k))!r}),")
