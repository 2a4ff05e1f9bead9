//! What one stage did, as the run's manifest records it: its status, times, the files it wrote
//! (with their SHA-256) and its kind's [`Summary`]: the typed figures that downstream stages, the
//! run summary, the report and the health check read.

use serde::{Deserialize, Serialize};

use super::{
    drift, evaluate, fairness, health, load, prepare, register, score, sql, train, validate,
};
use crate::config::StageKind;

/// The state of one stage within a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Selected, not started yet.
    Pending,
    Running,
    Succeeded,
    /// Outputs taken from an earlier run whose stage had the same fingerprint, or from the run
    /// named for `--stage`/`--from`/`--to`.
    Reused,
    Failed,
    /// Not run because a stage it needs failed.
    Skipped,
    /// Cancelled by a stop signal (SIGTERM, SIGINT) after the shutdown grace; runs again when the
    /// run is resumed.
    Interrupted,
    /// Not part of this invocation.
    NotSelected,
}

impl StageStatus {
    /// Whether downstream stages may use this stage's outputs.
    pub fn is_done(self) -> bool {
        matches!(self, StageStatus::Succeeded | StageStatus::Reused)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Pending => "pending",
            StageStatus::Running => "running",
            StageStatus::Succeeded => "succeeded",
            StageStatus::Reused => "reused",
            StageStatus::Failed => "failed",
            StageStatus::Skipped => "skipped",
            StageStatus::Interrupted => "interrupted",
            StageStatus::NotSelected => "not selected",
        }
    }
}

/// One file a stage wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// The stage's name for it, e.g. `quality` or `customers.clean`.
    pub name: String,
    /// Relative to the artifacts root, e.g. `20261121T101500Z-3fa2/validate/quality.json`.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

macro_rules! summaries {
    ($($variant:ident($module:ident) => $accessor:ident),* $(,)?) => {
        /// The figures a stage of each kind reports, for people and for the stages after it.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Summary {
            $($variant($module::Summary),)*
        }

        impl Summary {
            pub fn kind(&self) -> StageKind {
                match self {
                    $(Summary::$variant(_) => StageKind::$variant,)*
                }
            }

            fn to_json(&self) -> serde_json::Result<serde_json::Value> {
                match self {
                    $(Summary::$variant(s) => serde_json::to_value(s),)*
                }
            }

            fn from_json(kind: StageKind, v: serde_json::Value) -> serde_json::Result<Summary> {
                Ok(match kind {
                    $(StageKind::$variant => Summary::$variant(serde_json::from_value(v)?),)*
                })
            }
        }

        $(
            impl From<$module::Summary> for Summary {
                fn from(s: $module::Summary) -> Summary {
                    Summary::$variant(s)
                }
            }
        )*

        impl StageRecord {
            $(
                #[doc = concat!("The summary of a completed `", stringify!($module), "` stage.")]
                pub fn $accessor(&self) -> Option<&$module::Summary> {
                    match &self.summary {
                        Some(Summary::$variant(s)) if self.status.is_done() => Some(s),
                        _ => None,
                    }
                }
            )*
        }
    };
}

summaries! {
    Load(load) => load,
    Validate(validate) => validate,
    Prepare(prepare) => prepare,
    Train(train) => train,
    Score(score) => score,
    Drift(drift) => drift,
    Fairness(fairness) => fairness,
    Register(register) => register,
    Evaluate(evaluate) => evaluate,
    Health(health) => health,
    Sql(sql) => sql,
}

/// What one stage did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RecordJson", into = "RecordJson")]
pub struct StageRecord {
    pub kind: StageKind,
    pub status: StageStatus,
    pub fingerprint: String,
    pub attempts: u32,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_s: Option<f64>,
    /// The run whose outputs were reused.
    pub reused_from: Option<String>,
    pub outputs: Vec<OutputRecord>,
    /// The kind's figures, once the stage has succeeded.
    pub summary: Option<Summary>,
    /// Checks the stage's results failed (a gate, an unhealthy model): the stage succeeded, but
    /// the run ends with exit code 1 and these messages.
    pub check_failures: Vec<String>,
    /// What went wrong around a successful stage without failing it (the reuse cache could not
    /// be written, ...).
    pub warnings: Vec<String>,
    /// After this time the outputs may no longer be reused (e.g. freshness measured on the clock).
    pub valid_until: Option<String>,
    pub error: Option<String>,
    pub error_kind: Option<String>,
    /// The metric samples the stage emitted, replayed when the stage is reused.
    pub samples: Vec<crate::telemetry::Sample>,
}

impl StageRecord {
    pub fn new(kind: StageKind, status: StageStatus, fingerprint: String) -> StageRecord {
        StageRecord {
            kind,
            status,
            fingerprint,
            attempts: 0,
            started_at: None,
            finished_at: None,
            duration_s: None,
            reused_from: None,
            outputs: Vec::new(),
            summary: None,
            check_failures: Vec::new(),
            warnings: Vec::new(),
            valid_until: None,
            error: None,
            error_kind: None,
            samples: Vec::new(),
        }
    }

    pub fn output(&self, name: &str) -> Option<&OutputRecord> {
        self.outputs.iter().find(|o| o.name == name)
    }

    /// Whether one of its outputs is the file at `path` (under the artifacts root).
    pub fn has_output_at(&self, path: &str) -> bool {
        self.outputs.iter().any(|o| o.path == path)
    }
}

/// A record as `manifest.json` holds it: the summary is the kind's summary type, or null.
#[derive(Serialize, Deserialize)]
struct RecordJson {
    kind: StageKind,
    status: StageStatus,
    fingerprint: String,
    attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    duration_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reused_from: Option<String>,
    #[serde(default)]
    outputs: Vec<OutputRecord>,
    #[serde(default)]
    summary: serde_json::Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    check_failures: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    valid_until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    samples: Vec<crate::telemetry::Sample>,
}

impl TryFrom<RecordJson> for StageRecord {
    type Error = String;

    fn try_from(r: RecordJson) -> Result<StageRecord, String> {
        let summary =
            match r.summary {
                serde_json::Value::Null => None,
                v => Some(Summary::from_json(r.kind, v).map_err(|e| {
                    format!("the summary of a `{}` stage is not valid: {e}", r.kind)
                })?),
            };
        Ok(StageRecord {
            kind: r.kind,
            status: r.status,
            fingerprint: r.fingerprint,
            attempts: r.attempts,
            started_at: r.started_at,
            finished_at: r.finished_at,
            duration_s: r.duration_s,
            reused_from: r.reused_from,
            outputs: r.outputs,
            summary,
            check_failures: r.check_failures,
            warnings: r.warnings,
            valid_until: r.valid_until,
            error: r.error,
            error_kind: r.error_kind,
            samples: r.samples,
        })
    }
}

impl From<StageRecord> for RecordJson {
    fn from(r: StageRecord) -> RecordJson {
        RecordJson {
            kind: r.kind,
            status: r.status,
            fingerprint: r.fingerprint,
            attempts: r.attempts,
            started_at: r.started_at,
            finished_at: r.finished_at,
            duration_s: r.duration_s,
            reused_from: r.reused_from,
            outputs: r.outputs,
            // Summaries are plain data (maps keyed by strings, numbers, text): serialising one
            // cannot fail.
            summary: r
                .summary
                .map(|s| s.to_json().expect("a summary serialises"))
                .unwrap_or_default(),
            check_failures: r.check_failures,
            warnings: r.warnings,
            valid_until: r.valid_until,
            error: r.error,
            error_kind: r.error_kind,
            samples: r.samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_through_json_with_its_kinds_summary() {
        let mut r = StageRecord::new(StageKind::Prepare, StageStatus::Succeeded, "fp".into());
        r.summary = Some(Summary::Prepare(prepare::Summary {
            rows: 10,
            train_rows: 8,
            holdout_rows: 2,
        }));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "prepare");
        assert_eq!(v["summary"]["train_rows"], 8);
        let back: StageRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.prepare().unwrap().holdout_rows, 2);
        assert!(back.train().is_none());
        // A summary that is not its kind's is an error that names the kind.
        let bad = serde_json::json!({ "kind": "prepare", "status": "succeeded", "fingerprint": "",
            "attempts": 1, "summary": { "rows": "many" } });
        let e = serde_json::from_value::<StageRecord>(bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`prepare` stage"), "{e}");
    }
}
