# Reference values for src/model/estimate/ and src/model/calibration.rs tests: NannyML's CBPE and
# DLE, and scikit-learn's isotonic regression, calibration curve and sigmoid (Platt) calibration.
# nannyml 0.13.1, scikit-learn, lightgbm, numpy (python 3.11), in a virtualenv:
#   python3 -m venv /tmp/nn && /tmp/nn/bin/pip install nannyml statsmodels && /tmp/nn/bin/python scripts/reference/cbpe_dle.py
# The inputs come from an integer generator both this script and the Rust tests compute exactly
# (`lcg` below and `Lcg` in the tests), so no data is copied between them.
import json
import numpy as np
import pandas as pd
import nannyml as nml
from nannyml.calibration import NoopCalibrator
from sklearn.isotonic import IsotonicRegression
from sklearn.calibration import calibration_curve, _sigmoid_calibration


def lcg(seed):
    x = seed
    while True:
        x = (6364136223846793005 * x + 1442695040888963407) % 2**64
        yield (x >> 40) / 2**24  # 24 bits: exact in f64


def binary(seed, n, shift):
    g = lcg(seed)
    p = np.array([min(max(next(g) * (1 - shift) + shift * next(g) ** 2, 1e-6), 1 - 1e-6) for _ in range(n)])
    y = np.array([int(next(g) < q) for q in p])
    return p, y


out = {}
# CBPE: a reference with targets, an analysis without; probabilities are already calibrated.
p_ref, y_ref = binary(7, 3000, 0.0)
p_ana, _ = binary(11, 2000, 0.3)
ref = pd.DataFrame({"p": p_ref, "y": y_ref, "pred": (p_ref >= 0.5).astype(int), "t": 0})
ana = pd.DataFrame({"p": p_ana, "pred": (p_ana >= 0.5).astype(int), "t": 1})
est = nml.CBPE(y_pred_proba="p", y_pred="pred", y_true="y", problem_type="classification_binary",
               metrics=["roc_auc", "precision", "recall", "f1"], chunk_number=1,
               calibrator=NoopCalibrator())
est.fit(ref)
r = est.estimate(ana).to_df()
r = r[r[("chunk", "period")] == "analysis"]  # the result also holds the reference chunk
for m in ["roc_auc", "precision", "recall", "f1"]:
    out[f"cbpe_{m}"] = {k: float(r[(m, k)].iloc[0]) for k in
                        ["value", "sampling_error", "upper_confidence_boundary", "lower_confidence_boundary"]}

# CBPE with NannyML's own calibration on the reference: over-confident probabilities
# (p^2 / (p^2 + (1-p)^2) of the true p), which isotonic regression on the reference corrects.
def overconfident_binary(seed, n, shift):
    p, y = binary(seed, n, shift)
    return p * p / (p * p + (1 - p) * (1 - p)), y

q_ref, y_ref = overconfident_binary(19, 3000, 0.0)
q_ana, _ = overconfident_binary(23, 2000, 0.3)
ref = pd.DataFrame({"p": q_ref, "y": y_ref, "pred": (q_ref >= 0.5).astype(int), "t": 0})
ana = pd.DataFrame({"p": q_ana, "pred": (q_ana >= 0.5).astype(int), "t": 1})
est = nml.CBPE(y_pred_proba="p", y_pred="pred", y_true="y", problem_type="classification_binary",
               metrics=["roc_auc", "precision", "recall", "f1"], chunk_number=1)
est.fit(ref)
out["cbpe_calibrated_needs_calibration"] = bool(est.needs_calibration)
r = est.estimate(ana).to_df()
r = r[r[("chunk", "period")] == "analysis"]
for m in ["roc_auc", "precision", "recall", "f1"]:
    out[f"cbpe_calibrated_{m}"] = {k: float(r[(m, k)].iloc[0]) for k in
                                   ["value", "sampling_error", "upper_confidence_boundary", "lower_confidence_boundary"]}

# DLE: regression with two features; the model's prediction is a fixed function of them.
def regression(seed, n, shift):
    g = lcg(seed)
    rows = []
    for _ in range(n):
        a = next(g) * 4 - 2 + shift
        b = next(g)
        noise = (next(g) - 0.5) * (0.5 + abs(a))
        rows.append((a, b, a * a + b + noise, a * a + 0.8 * b))
    return pd.DataFrame(rows, columns=["a", "b", "y", "pred"])

ref = regression(3, 3000, 0.0)
ana = regression(5, 2000, 0.5)
ref["t"], ana["t"] = 0, 1
dle = nml.DLE(feature_column_names=["a", "b"], y_pred="pred", y_true="y", metrics=["mae", "rmse"],
              chunk_number=1)
dle.fit(ref)
r = dle.estimate(ana).to_df()
r = r[r[("chunk", "period")] == "analysis"]
for m in ["mae", "rmse"]:
    out[f"dle_{m}"] = {k: float(r[(m, k)].iloc[0]) for k in
                       ["value", "sampling_error", "upper_confidence_boundary", "lower_confidence_boundary"]}
out["dle_realized_mae"] = float(np.mean(np.abs(ana["y"] - ana["pred"])))
out["dle_realized_rmse"] = float(np.sqrt(np.mean((ana["y"] - ana["pred"]) ** 2)))

# Calibration: an over-confident score, its isotonic and sigmoid calibrations.
g = lcg(13)
raw = np.array([next(g) for _ in range(1000)])
truth = np.array([int(next(g) < 0.2 + 0.6 * q) for q in raw])
iso = IsotonicRegression(out_of_bounds="clip", increasing=True).fit(raw, truth)
probe = np.array([0.0, 0.05, 0.3, 0.5, 0.77, 1.0])
out["isotonic"] = [float(v) for v in iso.predict(probe)]
a, b = _sigmoid_calibration(raw, truth)
out["sigmoid_ab"] = [float(a), float(b)]
pt, pp = calibration_curve(truth, raw, n_bins=10, strategy="uniform")
out["curve_true"] = [float(v) for v in pt]
out["curve_pred"] = [float(v) for v in pp]
print(json.dumps(out, indent=1))
