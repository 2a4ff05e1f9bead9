//! The business figures of the monitoring strategy, from one scoring of the current customers:
//! the predicted churn and retention rates, the average predicted lifetime value and engagement
//! score, customers per churn-risk segment, and the revenue at risk (Σ predicted LTV × churn
//! probability, the churn guide's `revenue_impact_dollars`). Which models give them and the
//! segments come from `[business]` in the pipeline file.
//!
//! The churn rate is the mean churn probability: with calibrated probabilities, the expected
//! share of customers who churn (the share above the decision threshold is the model's
//! `positive_rate`, a different figure).

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::config::Business;

/// The figures of one scoring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub customers: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_churn_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_retention_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_predicted_ltv: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_engagement_score: Option<f64>,
    /// Customers per churn-risk segment, in the segments' order (empty without a churn model).
    #[serde(default)]
    pub segments: IndexMap<String, u64>,
    /// Σ predicted LTV × churn probability, in the LTV's unit (USD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revenue_at_risk: Option<f64>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The figures of `customers` scored customers, from the predictions of the `[business]`
/// models that were scored (row `i` of each is the same customer).
pub fn figures(
    b: &Business,
    customers: usize,
    churn: Option<&[f64]>,
    ltv: Option<&[f64]>,
    engagement: Option<&[f64]>,
) -> Figures {
    let churn_rate = churn.and_then(mean);
    let mut segments: IndexMap<String, u64> = IndexMap::new();
    if let Some(p) = churn {
        let mut counts = vec![0u64; b.risk_segments.len()];
        for v in p {
            // The last segment whose lowest probability the customer reaches.
            let k = b.risk_segments.partition_point(|(_, lo)| lo <= v);
            if let Some(c) = counts.get_mut(k.saturating_sub(1)) {
                *c += 1;
            }
        }
        segments = b
            .risk_segments
            .iter()
            .map(|(name, _)| name.clone())
            .zip(counts)
            .collect();
    }
    let revenue_at_risk = match (churn, ltv) {
        (Some(c), Some(l)) => Some(c.iter().zip(l).map(|(p, v)| p * v).sum()),
        _ => None,
    };
    Figures {
        customers: customers as u64,
        predicted_churn_rate: churn_rate,
        predicted_retention_rate: churn_rate.map(|r| 1.0 - r),
        average_predicted_ltv: ltv.and_then(mean),
        average_engagement_score: engagement.and_then(mean),
        segments,
        revenue_at_risk,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn business() -> Business {
        Business {
            churn_model: Some("churn".into()),
            ltv_model: Some("ltv".into()),
            engagement_model: None,
            risk_segments: vec![
                ("low".into(), 0.0),
                ("medium".into(), 0.3),
                ("high".into(), 0.6),
            ],
        }
    }

    #[test]
    fn figures_from_predictions() {
        let churn = [0.1, 0.3, 0.59, 0.6, 0.95];
        let ltv = [100.0, 200.0, 0.0, 50.0, 10.0];
        let f = figures(&business(), 5, Some(&churn), Some(&ltv), None);
        assert!((f.predicted_churn_rate.unwrap() - 2.54 / 5.0).abs() < 1e-12);
        assert!((f.predicted_retention_rate.unwrap() - (1.0 - 2.54 / 5.0)).abs() < 1e-12);
        assert_eq!(f.average_predicted_ltv, Some(72.0));
        assert_eq!(f.average_engagement_score, None);
        // A probability equal to a segment's lowest is in that segment.
        let seg: Vec<(&str, u64)> = f.segments.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(seg, [("low", 1), ("medium", 2), ("high", 2)]);
        assert!((f.revenue_at_risk.unwrap() - (10.0 + 60.0 + 0.0 + 30.0 + 9.5)).abs() < 1e-9);
    }

    #[test]
    fn no_churn_model_no_segments_or_revenue() {
        let f = figures(&business(), 2, None, Some(&[1.0, 3.0]), Some(&[0.5, 0.7]));
        assert!(f.segments.is_empty());
        assert_eq!(f.revenue_at_risk, None);
        assert_eq!(f.average_engagement_score, Some(0.6));
    }
}
