//! The pipeline's internal events. Each is one small value that knows both its log line and its
//! metric samples: `StageCtx::emit` and the engine call [`Event::log`] and record
//! [`Event::samples`] together, so what the logs say and what Prometheus shows are the same
//! numbers. No event carries a customer id.

use super::Sample;

/// Something worth a log line and a metric.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// The run ended (`status` succeeded or failed).
    RunFinished {
        pipeline: &'a str,
        run_id: &'a str,
        status: &'a str,
        seconds: f64,
        cost_usd: f64,
        /// Unix time of the latest successful run (this one if it succeeded), if any.
        last_success: Option<f64>,
    },
    /// A stage finished in this run (or was reused: `seconds` 0).
    StageFinished {
        pipeline: &'a str,
        stage: &'a str,
        status: &'a str,
        seconds: f64,
    },
    /// An attempt of a stage failed (it may be retried).
    StageAttemptFailed {
        pipeline: &'a str,
        stage: &'a str,
        attempt: u32,
        error: &'a str,
        will_retry: bool,
    },
    DatasetLoaded {
        dataset: &'a str,
        rows: usize,
        files: usize,
    },
    /// A sql stage's query ran: rows and bytes its scans read per input table, rows it wrote.
    QueryRan {
        stage: &'a str,
        output: &'a str,
        /// (table, rows in the files opened, rows the scans passed on, bytes scanned)
        inputs: Vec<(&'a str, u64, u64, u64)>,
        rows_out: u64,
        seconds: f64,
    },
    /// One quality check of a dataset, with its per-column values where it has them.
    QualityChecked {
        dataset: &'a str,
        check: &'a str,
        value: f64,
        status: &'a str,
        columns: Vec<(String, f64)>,
        worst: String,
    },
    ModelEvaluated {
        model: &'a str,
        metric: &'a str,
        value: f64,
    },
    ModelTrained {
        model: &'a str,
        algorithm: &'a str,
        seconds: f64,
        passed: bool,
        failed_gates: String,
    },
    FairnessMeasured {
        model: &'a str,
        attribute: &'a str,
        parity: Option<f64>,
        equal_opportunity: Option<f64>,
        violation: Option<String>,
    },
    FeatureDrift {
        feature: &'a str,
        ks: Option<f64>,
        p_value: Option<f64>,
        psi: Option<f64>,
        drifted: bool,
    },
    PredictionDrift {
        model: &'a str,
        ks: f64,
        drifted: bool,
    },
    /// The score stage scored the current customers with a model.
    ModelScored {
        model: &'a str,
        /// The artifact version the scores carry (`<run>/<sha prefix>`).
        version: &'a str,
        rows: usize,
        /// Cumulative counts of scores at most each bound.
        distribution: Vec<(f64, u64)>,
        /// Binary models: the share predicted positive at the threshold.
        positive_rate: Option<f64>,
    },
    ModelRegistered {
        model: &'a str,
        version: u32,
        /// The registry's id of the version (`churn_v3`), logged as `model_version`.
        model_id: &'a str,
        status: &'a str,
        reason: Option<&'a str>,
    },
    ModelHealth {
        model: &'a str,
        /// The production version's id (`churn_v3`), if there is one.
        version: Option<&'a str>,
        healthy: bool,
        /// Unix time the production version was registered.
        updated: Option<f64>,
        reasons: String,
        /// The accuracy the check used.
        accuracy: Option<&'a crate::stages::health::Accuracy>,
    },
    /// A binary model's calibration on the holdout.
    ModelCalibrated {
        model: &'a str,
        method: &'a str,
        ece: f64,
    },
    /// A metric estimated on scored customers before outcomes.
    PerformanceEstimated {
        model: &'a str,
        metric: &'a str,
        estimate: crate::model::estimate::Estimate,
    },
    /// A metric realized on a version's latest cohort with outcomes.
    AccuracyRealized {
        model: &'a str,
        version: &'a str,
        metric: &'a str,
        value: f64,
    },
    /// Outcomes joined with a version's scores.
    OutcomesJoined {
        model: &'a str,
        version: &'a str,
        outcomes: u64,
    },
    /// The churn rate realized by the latest evaluated cohort of the churn model.
    ChurnRealized { rate: f64 },
    /// The business figures of a scoring.
    BusinessFigures {
        figures: &'a crate::business::Figures,
    },
}

impl Event<'_> {
    /// Writes the event's log line.
    pub fn log(&self) {
        match self {
            Event::RunFinished {
                pipeline,
                run_id,
                status,
                seconds,
                cost_usd,
                ..
            } => {
                tracing::info!(pipeline, run_id, status, seconds, cost_usd, "run finished")
            }
            Event::StageFinished {
                stage,
                status,
                seconds,
                ..
            } => {
                tracing::info!(stage, status, seconds, "stage finished")
            }
            Event::StageAttemptFailed {
                stage,
                attempt,
                error,
                will_retry: true,
                ..
            } => {
                tracing::warn!(stage, attempt, error, "stage attempt failed; retrying")
            }
            Event::StageAttemptFailed {
                stage,
                attempt,
                error,
                will_retry: false,
                ..
            } => {
                tracing::error!(stage, attempt, error, "stage failed")
            }
            Event::DatasetLoaded {
                dataset,
                rows,
                files,
            } => {
                tracing::info!(dataset, rows, files, "dataset loaded")
            }
            Event::QueryRan {
                stage,
                output,
                inputs,
                rows_out,
                seconds,
            } => {
                let rows_in: u64 = inputs.iter().map(|i| i.1).sum();
                let bytes_scanned: u64 = inputs.iter().map(|i| i.3).sum();
                let per_table = inputs
                    .iter()
                    .map(|(t, i, r, b)| format!("{t}: {i} rows in, {r} read, {b} bytes"))
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::info!(
                    stage,
                    output,
                    rows_in,
                    bytes_scanned,
                    rows_out,
                    seconds,
                    inputs = %per_table,
                    "query ran"
                )
            }
            Event::QualityChecked {
                dataset,
                check,
                value,
                status,
                worst,
                ..
            } => match *status {
                "pass" => tracing::info!(dataset, check, value, status, "quality check"),
                "warn" => tracing::warn!(dataset, check, value, status, worst, "quality check"),
                _ => tracing::error!(dataset, check, value, status, worst, "quality check"),
            },
            Event::ModelEvaluated {
                model,
                metric,
                value,
            } => {
                tracing::info!(model, metric, value, "holdout metric")
            }
            Event::ModelTrained {
                model,
                algorithm,
                seconds,
                passed: true,
                ..
            } => {
                tracing::info!(model, algorithm, seconds, "model trained; gates passed")
            }
            Event::ModelTrained {
                model,
                algorithm,
                seconds,
                failed_gates,
                ..
            } => {
                tracing::warn!(
                    model,
                    algorithm,
                    seconds,
                    failed = failed_gates.as_str(),
                    "model trained; failed its gates"
                )
            }
            Event::FairnessMeasured {
                model,
                attribute,
                parity,
                equal_opportunity,
                violation,
            } => match violation {
                None => tracing::info!(
                    model,
                    attribute,
                    parity,
                    equal_opportunity,
                    "fairness measured"
                ),
                Some(v) => tracing::warn!(
                    model,
                    attribute,
                    parity,
                    equal_opportunity,
                    violation = v.as_str(),
                    "fairness violation"
                ),
            },
            Event::FeatureDrift {
                feature,
                ks,
                p_value,
                psi,
                drifted,
            } => {
                if *drifted {
                    tracing::warn!(feature, ks, p_value, psi, "feature drift")
                } else {
                    tracing::info!(feature, ks, p_value, psi, "no feature drift")
                }
            }
            Event::PredictionDrift { model, ks, drifted } => {
                if *drifted {
                    tracing::warn!(model, ks, "prediction drift")
                } else {
                    tracing::info!(model, ks, "no prediction drift")
                }
            }
            Event::ModelScored {
                model,
                version,
                rows,
                positive_rate,
                ..
            } => {
                tracing::info!(
                    model,
                    model_version = version,
                    rows,
                    positive_rate,
                    "customers scored"
                )
            }
            Event::ModelRegistered {
                model,
                version,
                model_id,
                status,
                reason,
            } => {
                tracing::info!(
                    model,
                    model_version = model_id,
                    version,
                    status,
                    reason,
                    "model registered"
                )
            }
            Event::ModelHealth {
                model,
                version,
                healthy: true,
                accuracy,
                ..
            } => match accuracy.filter(|a| a.below_gate_in_a_row > 0) {
                None => tracing::info!(model, model_version = version, "model healthy"),
                Some(a) => tracing::warn!(
                    model,
                    model_version = version,
                    source = a.source.as_str(),
                    below_gate_in_a_row = a.below_gate_in_a_row,
                    evaluation_periods = a.evaluation_periods,
                    "model accuracy below its gate; retraining is due if it stays there"
                ),
            },
            Event::ModelHealth {
                model,
                version,
                reasons,
                ..
            } => {
                tracing::error!(
                    model,
                    model_version = version,
                    reasons = reasons.as_str(),
                    "model unhealthy: retraining is due"
                )
            }
            Event::ModelCalibrated { model, method, ece } => {
                tracing::info!(model, method, ece, "calibration measured")
            }
            Event::PerformanceEstimated {
                model,
                metric,
                estimate,
            } => tracing::info!(
                model,
                metric,
                value = estimate.value,
                lower = estimate.lower,
                upper = estimate.upper,
                "performance estimated"
            ),
            Event::AccuracyRealized {
                model,
                version,
                metric,
                value,
            } => tracing::info!(
                model,
                model_version = version,
                metric,
                value,
                "performance realized"
            ),
            Event::OutcomesJoined {
                model,
                version,
                outcomes,
            } => tracing::info!(
                model,
                model_version = version,
                outcomes,
                "outcomes joined with scores"
            ),
            Event::ChurnRealized { rate } => tracing::info!(rate, "churn realized"),
            Event::BusinessFigures { figures } => tracing::info!(
                customers = figures.customers,
                predicted_churn_rate = figures.predicted_churn_rate,
                average_predicted_ltv = figures.average_predicted_ltv,
                average_engagement_score = figures.average_engagement_score,
                revenue_at_risk = figures.revenue_at_risk,
                segments = ?figures.segments,
                "business figures"
            ),
        }
    }

    /// The metric samples of the event.
    pub fn samples(&self) -> Vec<Sample> {
        let s = Sample::new;
        match self {
            Event::RunFinished {
                pipeline,
                status,
                seconds,
                cost_usd,
                last_success,
                ..
            } => {
                let mut v = vec![
                    s(
                        "pipeline_runs_total",
                        &[("pipeline", pipeline), ("status", status)],
                        1.0,
                    ),
                    s(
                        "pipeline_run_duration_seconds",
                        &[("pipeline", pipeline)],
                        *seconds,
                    ),
                    s(
                        "pipeline_run_cost_usd",
                        &[("pipeline", pipeline)],
                        *cost_usd,
                    ),
                ];
                if let Some(t) = last_success {
                    v.push(s(
                        "pipeline_last_success_timestamp_seconds",
                        &[("pipeline", pipeline)],
                        *t,
                    ));
                }
                v
            }
            Event::StageFinished {
                pipeline,
                stage,
                status,
                seconds,
            } => vec![s(
                "pipeline_stage_duration_seconds",
                &[("pipeline", pipeline), ("stage", stage), ("status", status)],
                *seconds,
            )],
            Event::StageAttemptFailed {
                pipeline, stage, ..
            } => vec![s(
                "pipeline_stage_failures_total",
                &[("pipeline", pipeline), ("stage", stage)],
                1.0,
            )],
            Event::DatasetLoaded { dataset, rows, .. } => {
                vec![s("data_rows", &[("dataset", dataset)], *rows as f64)]
            }
            Event::QueryRan {
                stage,
                inputs,
                rows_out,
                ..
            } => {
                let mut v = vec![s("sql_rows_written", &[("stage", stage)], *rows_out as f64)];
                for (t, rows_in, rows, bytes) in inputs {
                    let l = [("stage", *stage), ("table", *t)];
                    v.push(s("sql_rows_in", &l, *rows_in as f64));
                    v.push(s("sql_rows_read", &l, *rows as f64));
                    v.push(s("sql_bytes_scanned", &l, *bytes as f64));
                }
                v
            }
            Event::QualityChecked {
                dataset,
                check,
                value,
                columns,
                ..
            } => {
                let per_column = |name: &str| -> Vec<Sample> {
                    columns
                        .iter()
                        .map(|(c, v)| s(name, &[("dataset", dataset), ("column", c)], *v))
                        .collect()
                };
                match *check {
                    "null_rate" => per_column("data_quality_null_rate"),
                    "outliers" => per_column("data_quality_outlier_rate"),
                    "schema_violations" => {
                        vec![s(
                            "data_quality_schema_violations",
                            &[("dataset", dataset)],
                            *value,
                        )]
                    }
                    "duplicates" => {
                        vec![s(
                            "data_quality_duplicate_records",
                            &[("dataset", dataset)],
                            *value,
                        )]
                    }
                    // The check measures hours; Prometheus' base unit is the second.
                    "freshness" => vec![s(
                        "data_freshness_seconds",
                        &[("dataset", dataset)],
                        *value * 3600.0,
                    )],
                    _ => Vec::new(),
                }
            }
            Event::ModelEvaluated {
                model,
                metric,
                value,
            } => {
                vec![s(
                    "model_accuracy",
                    &[("model", model), ("metric", metric)],
                    *value,
                )]
            }
            Event::ModelTrained { model, seconds, .. } => {
                vec![s(
                    "model_training_duration_seconds",
                    &[("model", model)],
                    *seconds,
                )]
            }
            Event::FairnessMeasured {
                model,
                attribute,
                parity,
                equal_opportunity,
                ..
            } => {
                let l = [("model", *model), ("attribute", *attribute)];
                let mut v = Vec::new();
                if let Some(p) = parity {
                    v.push(s("model_fairness_parity", &l, *p));
                }
                if let Some(e) = equal_opportunity {
                    v.push(s("model_fairness_equal_opportunity", &l, *e));
                }
                v
            }
            Event::FeatureDrift {
                feature,
                ks,
                p_value,
                psi,
                ..
            } => {
                let l = [("feature", *feature)];
                let mut v = Vec::new();
                if let Some(k) = ks {
                    v.push(s("feature_drift_ks", &l, *k));
                }
                if let Some(p) = p_value {
                    v.push(s("feature_drift_p_value", &l, *p));
                }
                if let Some(p) = psi {
                    v.push(s("feature_drift_psi", &l, *p));
                }
                v
            }
            Event::PredictionDrift { model, ks, .. } => {
                vec![s("prediction_drift_ks", &[("model", model)], *ks)]
            }
            Event::ModelScored {
                model,
                rows,
                distribution,
                positive_rate,
                ..
            } => {
                let mut v = vec![s(
                    "model_predictions_total",
                    &[("model", model)],
                    *rows as f64,
                )];
                for (le, n) in distribution {
                    let le = if le.is_infinite() {
                        "+Inf".to_string()
                    } else {
                        format!("{le}")
                    };
                    v.push(s(
                        "model_score_distribution",
                        &[("model", model), ("upper_bound", &le)],
                        *n as f64,
                    ));
                }
                let _ = positive_rate;
                v
            }
            Event::ModelRegistered { .. } => Vec::new(),
            Event::ModelHealth {
                model,
                healthy,
                updated,
                accuracy,
                ..
            } => {
                let mut v = vec![s(
                    "model_health",
                    &[("model", model)],
                    f64::from(u8::from(*healthy)),
                )];
                if let Some(t) = updated {
                    v.push(s("model_last_updated_timestamp", &[("model", model)], *t));
                }
                if let Some(a) = accuracy {
                    for (metric, x) in &a.metrics {
                        let l = [
                            ("model", *model),
                            ("metric", metric.name()),
                            ("source", a.source.as_str()),
                        ];
                        v.push(s("model_accuracy_observed", &l, *x));
                    }
                    v.push(s(
                        "model_accuracy_below_gate_evaluations",
                        &[("model", model)],
                        f64::from(a.below_gate_in_a_row),
                    ));
                }
                v
            }
            Event::ModelCalibrated { model, ece, .. } => {
                vec![s("model_calibration_error", &[("model", model)], *ece)]
            }
            Event::PerformanceEstimated {
                model,
                metric,
                estimate,
            } => {
                let l = [("model", *model), ("metric", *metric)];
                vec![
                    s("model_accuracy_estimated", &l, estimate.value),
                    s("model_accuracy_estimated_lower", &l, estimate.lower),
                    s("model_accuracy_estimated_upper", &l, estimate.upper),
                ]
            }
            Event::AccuracyRealized {
                model,
                version,
                metric,
                value,
            } => vec![s(
                "model_accuracy_realized",
                &[("model", model), ("version", version), ("metric", metric)],
                *value,
            )],
            Event::OutcomesJoined {
                model,
                version,
                outcomes,
            } => vec![s(
                "model_outcomes_joined",
                &[("model", model), ("version", version)],
                *outcomes as f64,
            )],
            Event::ChurnRealized { rate } => vec![
                s("realized_churn_rate", &[], *rate),
                s("realized_retention_rate", &[], 1.0 - rate),
            ],
            Event::BusinessFigures { figures: f } => {
                let mut v = Vec::new();
                let mut put = |name: &str, x: Option<f64>| {
                    if let Some(x) = x {
                        v.push(s(name, &[], x));
                    }
                };
                put("predicted_churn_rate", f.predicted_churn_rate);
                put("predicted_retention_rate", f.predicted_retention_rate);
                put("average_predicted_ltv_dollars", f.average_predicted_ltv);
                put("average_engagement_score", f.average_engagement_score);
                put("revenue_impact_dollars", f.revenue_at_risk);
                for (seg, n) in &f.segments {
                    v.push(s("customer_segments_total", &[("segment", seg)], *n as f64));
                }
                v
            }
        }
    }
}

/// Cumulative counts of `values` at most each bound (the last bound is +Inf).
pub fn distribution(values: &[f64], bounds: &[f64]) -> Vec<(f64, u64)> {
    let bounds: Vec<f64> = bounds
        .iter()
        .copied()
        .chain(std::iter::once(f64::INFINITY))
        .collect();
    // Each value counted in the first bucket whose bound it does not exceed, then summed up.
    let mut counts = vec![0u64; bounds.len()];
    for v in values.iter().filter(|v| !v.is_nan()) {
        if let Some(c) = counts.get_mut(bounds.partition_point(|b| b < v)) {
            *c += 1;
        }
    }
    let mut total = 0;
    bounds
        .into_iter()
        .zip(counts)
        .map(|(b, c)| {
            total += c;
            (b, total)
        })
        .collect()
}

/// Bucket bounds for a model's scores: tenths for probabilities and scores in [0, 1], otherwise
/// ten equal steps up to the largest score rounded up to a round number.
pub fn score_bounds(values: &[f64]) -> Vec<f64> {
    let max = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let min = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::min);
    if min >= 0.0 && max <= 1.0 {
        return (1..=10).map(|i| i as f64 / 10.0).collect();
    }
    let mag = 10f64.powf(max.abs().max(1.0).log10().floor());
    let top = (max / mag).ceil() * mag;
    (1..=10).map(|i| top * i as f64 / 10.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_is_cumulative() {
        let d = distribution(&[0.05, 0.15, 0.15, 0.95, f64::NAN], &[0.1, 0.2, 1.0]);
        assert_eq!(d, vec![(0.1, 1), (0.2, 3), (1.0, 4), (f64::INFINITY, 4)]);
        assert_eq!(score_bounds(&[0.2, 0.9])[9], 1.0);
        assert_eq!(score_bounds(&[12.0, 870.0])[9], 900.0);
    }

    #[test]
    fn quality_events_become_per_column_samples() {
        let e = Event::QualityChecked {
            dataset: "customers",
            check: "null_rate",
            value: 0.02,
            status: "warn",
            columns: vec![("age".into(), 0.02), ("plan".into(), 0.0)],
            worst: "age 2%".into(),
        };
        let s = e.samples();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "data_quality_null_rate");
        assert_eq!(
            s[0].labels,
            vec![
                ("dataset".into(), "customers".into()),
                ("column".into(), "age".into())
            ]
        );
    }
}
