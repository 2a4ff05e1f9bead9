//! The fairness stage on the fixtures: ratios consistent with the group table, small groups
//! left out, the generator's higher churn among 18–24 year olds flagged.

use crate::common::*;

fn fairness(p: &Project, run: &str) -> serde_json::Value {
    p.json(&format!("runs/{run}/fairness/fairness.json"))
}

#[test]
fn parity_ratios_follow_the_group_table_and_flag_the_age_effect() {
    let p = Project::new(true);
    let out = p.ok(&["run", "--as-of", AS_OF, "--run-id", "f"]);
    assert!(
        out.contains("no violation"),
        "the shipped fixtures pass the four-fifths rule: {out}"
    );
    let f = fairness(&p, "f");
    for (model, m) in f["models"].as_object().unwrap() {
        for (attr, a) in m["attributes"].as_object().unwrap() {
            let rates: Vec<f64> = a["groups"]
                .as_object()
                .unwrap()
                .values()
                .filter(|g| g["counted"] == true)
                .map(|g| g["selection_rate"].as_f64().unwrap())
                .collect();
            let want = rates.iter().cloned().fold(f64::INFINITY, f64::min)
                / rates.iter().cloned().fold(0.0, f64::max);
            let got = a["demographic_parity_ratio"].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-12,
                "{model}/{attr}: {got} vs {want}"
            );
            assert_eq!(
                a["violation"].as_bool().unwrap(),
                got < 0.8
                    || a["equal_opportunity_ratio"]
                        .as_f64()
                        .is_some_and(|e| e < 0.8)
            );
            let ci = a["demographic_parity_ci"].as_array().unwrap();
            assert!(ci[0].as_f64().unwrap() <= ci[1].as_f64().unwrap());
            assert_eq!(a["equal_opportunity_ratio"].is_null(), model != "churn");
        }
    }
    let age = &f["models"]["churn"]["attributes"]["age"];
    let young = age["groups"]["18-24"]["selection_rate"].as_f64().unwrap();
    let rest = age["groups"]["25-44"]["selection_rate"].as_f64().unwrap();
    assert!(
        young > rest,
        "18-24 churn more in the generated data: {young} vs {rest}"
    );
    // A stricter threshold turns the age effect into a violation, and the model is rejected.
    let o = p.mlpipe(&[
        "run",
        "--as-of",
        AS_OF,
        "--run-id",
        "strict",
        "--force",
        "--set",
        "fairness.threshold=0.9",
    ]);
    let m = p.manifest("strict");
    let violations = m["stages"]["fairness"]["summary"]["violations"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        violations
            .iter()
            .any(|v| v.as_str().unwrap().contains("model `churn`, age")),
        "{violations:?}"
    );
    assert!(stdout(&o).contains("VIOLATION"), "{}", stdout(&o));
    let reg = &m["stages"]["register"]["summary"]["models"]["churn"];
    assert_eq!(reg["status"], "rejected", "{reg}");
    assert!(
        reg["reason"]
            .as_str()
            .unwrap()
            .contains("fairness below 0.9"),
        "{reg}"
    );
}

#[test]
fn groups_below_the_minimum_size_are_reported_but_not_counted() {
    let p = Project::new(true);
    p.ok(&[
        "run",
        "--as-of",
        AS_OF,
        "--run-id",
        "small",
        "--set",
        "fairness.min_group_size=500",
    ]);
    let g = &fairness(&p, "small")["models"]["engagement"]["attributes"]["gender"]["groups"];
    // 3 % and 2 % of ~4 000 holdout rows: "other" and "unknown" are too small to count.
    assert_eq!(g["other"]["counted"], false);
    assert_eq!(g["unknown"]["counted"], false);
    assert_eq!(g["female"]["counted"], true);
    assert!(g["other"]["size"].as_u64().unwrap() > 0);
}
