#!/usr/bin/env python3
"""Reference values for src/model/linear.rs: scikit-learn's StandardScaler + OneHotEncoder(drop="first")
followed by LinearRegression, and by LogisticRegression(C=1/alpha), on a fixed 40-row dataset.

Prints Rust literals (inputs and expected predictions) for the tests.
Run: python3 scripts/reference/linear_baselines.py   (numpy, scikit-learn 1.9)
"""
import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

rng = np.random.default_rng(7)
n = 40
x1 = np.round(rng.normal(50, 10, n), 2)
x2 = np.round(rng.uniform(0, 1, n), 3)
cat = rng.integers(0, 3, n)  # category codes: sorted categories a, b, c
noise = np.round(rng.normal(0, 1, n), 3)
y_reg = np.round(3.0 + 0.2 * x1 - 4.0 * x2 + np.array([0.0, 1.5, -2.0])[cat] + noise, 4)
z = -0.05 * (x1 - 50) + 2.0 * (x2 - 0.5) + np.array([0.0, 0.8, -0.6])[cat] + noise
y_bin = (z > 0).astype(int)

X = np.column_stack([x1, x2, cat])
ct = ColumnTransformer([("num", StandardScaler(), [0, 1]), ("cat", OneHotEncoder(drop="first"), [2])])
lin = make_pipeline(ct, LinearRegression()).fit(X, y_reg)
log = make_pipeline(ct, LogisticRegression(C=1.0, tol=1e-12, max_iter=100000)).fit(X, y_bin)
# Score rows: the training rows plus two with an unseen/null category (code 3), which both
# mlpipe and OneHotEncoder(handle_unknown="ignore") encode as all zeros.
Xs = np.vstack([X, [[55.0, 0.2, 3], [40.0, 0.9, 3]]])
def enc(Xq):
    num = (Xq[:, :2] - ct.named_transformers_["num"].mean_) / ct.named_transformers_["num"].scale_
    oh = np.column_stack([(Xq[:, 2] == 1), (Xq[:, 2] == 2)]).astype(float)
    return np.hstack([num, oh])
p_lin = lin[-1].predict(enc(Xs))
p_log = log[-1].predict_proba(enc(Xs))[:, 1]
fmt = lambda a: "[" + ", ".join(repr(float(v)) for v in a) + "]"
print("const X1: [f64; 40] =", fmt(x1) + ";")
print("const X2: [f64; 40] =", fmt(x2) + ";")
print("const CAT: [f64; 40] =", fmt(cat) + ";")
print("const Y_REG: [f64; 40] =", fmt(y_reg) + ";")
print("const Y_BIN: [f64; 40] =", fmt(y_bin) + ";")
print("const P_LIN: [f64; 42] =", fmt(p_lin) + ";")
print("const P_LOG: [f64; 42] =", fmt(p_log) + ";")
