# Reference values for src/metrics.rs and src/fairness.rs tests.
# scikit-learn 1.9.1, fairlearn 0.15.0, numpy 2.4.6 (python 3.11).
import numpy as np
from sklearn import metrics as m
from fairlearn.metrics import demographic_parity_ratio, equal_opportunity_ratio, MetricFrame, selection_rate
y  = [0.3, 1.2, 2.5, 0.0, 4.1, 3.3, 2.2, 0.9, 1.7, 5.0, 2.8, 3.9]
p  = [0.5, 1.0, 2.1, 0.4, 3.6, 3.9, 2.0, 1.3, 1.1, 4.4, 3.1, 3.5]
print("r2", repr(m.r2_score(y, p)), "rmse", repr(m.root_mean_squared_error(y, p)), "mae", repr(m.mean_absolute_error(y, p)))
yb = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0]
s  = [0.9, 0.1, 0.8, 0.4, 0.4, 0.35, 0.8, 0.0, 1.0, 0.6, 0.2, 0.55, 0.4, 0.8]
print("auc", repr(m.roc_auc_score(yb, s)), "logloss", repr(m.log_loss(yb, s)), "brier", repr(m.brier_score_loss(yb, s)))
d = [int(v >= 0.5) for v in s]
print("precision", repr(m.precision_score(yb, d)), "recall", repr(m.recall_score(yb, d)), "f1", repr(m.f1_score(yb, d)))
g  = ["a", "a", "b", "b", "b", "c", "c", "c", "c", "a", "b", "c", "a", "b"]
print("dpr", repr(float(demographic_parity_ratio(yb, d, sensitive_features=g))))
print("eor", repr(float(equal_opportunity_ratio(yb, d, sensitive_features=g))))
mf = MetricFrame(metrics=selection_rate, y_true=yb, y_pred=d, sensitive_features=g)
print("rates", {k: float(v) for k, v in mf.by_group.items()})
# A group that never gets selected: ratio 0.
d0 = [0 if gg == "c" else dd for gg, dd in zip(g, d)]
print("dpr_zero", repr(float(demographic_parity_ratio(yb, d0, sensitive_features=g))))
# A group with no positives: its TPR is 0 (sklearn's confusion_matrix normalises 0/0 to 0).
y0 = [0 if gg == "a" else yy for gg, yy in zip(g, yb)]
print("eor_nopos", repr(float(equal_opportunity_ratio(y0, d, sensitive_features=g))))
