//! JSON has no NaN or infinity: serde_json writes such a number as `null`. A metric that is
//! undefined for the data (R² of a constant, a ratio of empty groups) is NaN in memory, so the
//! documents and summaries that hold one read `null` back as NaN with these.

use serde::{Deserialize, Deserializer};

/// A number, or NaN for `null`.
pub fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A map of numbers, each `null` read as NaN.
pub fn nan_map<'de, D, K>(d: D) -> Result<indexmap::IndexMap<K, f64>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + std::hash::Hash + Eq,
{
    let m = indexmap::IndexMap::<K, Option<f64>>::deserialize(d)?;
    Ok(m.into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Doc {
        #[serde(deserialize_with = "super::nan_if_null")]
        x: f64,
        #[serde(deserialize_with = "super::nan_map")]
        m: indexmap::IndexMap<String, f64>,
    }

    #[test]
    fn nan_is_written_as_null_and_read_back_as_nan() {
        let d = Doc {
            x: f64::NAN,
            m: [("a".to_string(), f64::INFINITY), ("b".to_string(), 1.5)].into(),
        };
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(text, r#"{"x":null,"m":{"a":null,"b":1.5}}"#);
        let back: Doc = serde_json::from_str(&text).unwrap();
        assert!(back.x.is_nan() && back.m["a"].is_nan());
        assert_eq!(back.m["b"], 1.5);
    }
}
