#!/usr/bin/env python3
"""Model quality and training time: mlpipe's boosted trees against LightGBM on the same split.

Usage: compare_lightgbm.py ROWS [--seed S] [--work DIR] [--mlpipe PATH] [--perpetual BIN [--budget B]]
Generates ROWS customers, runs `mlpipe run` on them, then fits LightGBM (200 trees, learning
rate 0.1, 31 leaves, 255 bins, categorical features as categories: the peer's settings) on the
very rows mlpipe trained on (its validated clean data), split by the same key hash, and prints
both holdout metrics side by side. Exits 1 when mlpipe is worse than LightGBM by more than
0.005 AUC or 0.01 R².
With --perpetual, also fits the `perpetual` crate on the same rows through tools/perpetual-eval
(build it with `cargo +nightly build --release` in that folder: perpetual needs nightly Rust) and
adds its holdout metric and fit time: the measurement behind the booster choice in
docs/ARCHITECTURE.md.
Needs: pip install pandas pyarrow scikit-learn lightgbm
"""
import argparse, json, os, subprocess, sys, time
import numpy as np, pandas as pd
import lightgbm as lgb
from sklearn.metrics import r2_score, roc_auc_score, mean_squared_error

ap = argparse.ArgumentParser()
ap.add_argument("rows", type=int)
ap.add_argument("--seed", type=int, default=11)
ap.add_argument("--work", default="/tmp/mlpipe-compare")
ap.add_argument("--mlpipe", default="target/release/mlpipe")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--perpetual", help="path to the built tools/perpetual-eval binary")
ap.add_argument("--budget", type=float, default=0.5, help="perpetual's budget (its default is 0.5)")
ap.add_argument("--pp-cats", choices=["native", "codes"], default="native",
                help="give perpetual the categories as categorical features or as plain integer codes")
a = ap.parse_args()
data, runs = f"{a.work}/data{a.rows}", f"{a.work}/runs{a.rows}"
if not os.path.exists(f"{data}/truth.json"):
    subprocess.run([a.mlpipe, "generate", "--rows", str(a.rows), "--seed", str(a.seed), "--out", data], check=True)
t0 = time.perf_counter()
subprocess.run([a.mlpipe, "run", "--force", "--log-format", "json", "--set", f'storage.data="{data}"',
                "--set", f'storage.artifacts="{runs}"'], check=True, stdout=subprocess.DEVNULL)
mlpipe_wall = time.perf_counter() - t0
run_id = json.load(open(f"{runs}/LATEST"))["run_id"]
manifest = json.load(open(f"{runs}/{run_id}/manifest.json"))
clean = pd.read_parquet(f"{runs}/" + next(o["path"] for o in manifest["stages"]["validate"]["outputs"] if o["name"] == "customers.clean"))
# mlpipe's split bucket (SHA-256 of the raw id, mod 100, as the peer's split), computed before the
# id is pseudonymised.
bucket = clean["_bucket"]
tr, te = clean[bucket < 80], clean[bucket >= 80]
NUM = ["age", "tenure_months", "sessions_30d", "avg_session_minutes", "days_since_last_login", "features_used",
       "support_tickets_90d", "payment_failures_90d", "monthly_spend", "email_open_rate", "discount_pct"]
CAT = ["gender", "region", "plan", "device"]
def X(df):
    x = df[NUM].copy()
    for c in CAT:
        x[c] = pd.Categorical(df[c], categories=sorted(tr[c].unique()))
    return x
params = dict(n_estimators=200, learning_rate=0.1, num_leaves=31, max_bin=255, n_jobs=a.threads, verbose=-1)
rows = []
failed = False
for model, target, kind, metric in [("engagement", "engagement_score", "reg", "r2"), ("churn", "churned", "bin", "auc"), ("ltv", "ltv_12m", "reg", "r2")]:
    t = time.perf_counter()
    if kind == "reg":
        m = lgb.LGBMRegressor(**params).fit(X(tr), tr[target]); lg = r2_score(te[target], m.predict(X(te)))
    else:
        m = lgb.LGBMClassifier(**params).fit(X(tr), tr[target]); lg = roc_auc_score(te[target], m.predict_proba(X(te))[:, 1])
    lg_s = time.perf_counter() - t
    mm = json.load(open(f"{runs}/{run_id}/train_{model}/metrics.json"))
    ours, ours_s = mm["metrics"][metric], mm["training_seconds"]
    tol = 0.005 if metric == "auc" else 0.01
    ok = ours >= lg - tol
    failed |= not ok
    pp = pp_s = float("nan")
    if a.perpetual:
        cols = NUM + CAT
        for name, df in (("train", tr), ("holdout", te)):
            x = X(df)
            for c in CAT:
                x[c] = x[c].cat.codes
            x[target] = df[target].astype(float)
            x.to_csv(f"{a.work}/pp_{name}.csv", index=False)
        cat_idx = ",".join(str(cols.index(c)) for c in CAT) if a.pp_cats == "native" else "-"
        out = subprocess.run([a.perpetual, f"{a.work}/pp_train.csv", f"{a.work}/pp_holdout.csv", kind, str(a.budget),
                              cat_idx, f"{a.work}/pp_pred.txt"], check=True, capture_output=True, text=True).stdout
        pp_s = float(out.split()[0])
        pred = np.loadtxt(f"{a.work}/pp_pred.txt")
        pp = r2_score(te[target], pred) if kind == "reg" else roc_auc_score(te[target], pred)
    rows.append((model, metric, ours, lg, ours - lg, ours_s, lg_s, "ok" if ok else "WORSE", pp, pp_s))
print(f"{a.rows} customers: {len(tr)} training rows, {len(te)} holdout rows; mlpipe whole run {mlpipe_wall:.2f} s")
extra = f" {'perpetual':>9} {'pp_fit_s':>8}" if a.perpetual else ""
print(f"{'model':<11} {'metric':<6} {'mlpipe':>9} {'lightgbm':>9} {'diff':>8} {'fit_s':>7} {'lgb_fit_s':>9}{extra}")
for r in rows:
    extra = f" {r[8]:>9.4f} {r[9]:>8.2f}" if a.perpetual else ""
    print(f"{r[0]:<11} {r[1]:<6} {r[2]:>9.4f} {r[3]:>9.4f} {r[4]:>+8.4f} {r[5]:>7.2f} {r[6]:>9.2f}{extra}  {r[7]}")
sys.exit(1 if failed else 0)
