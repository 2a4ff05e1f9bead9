//! Pseudonyms for personal data. Every table a run writes (clean rows, the QA table of rejected
//! rows, scores) carries the columns a dataset lists under `pii` as pseudonyms, never in clear:
//! the first 32 hex characters (128 bits) of HMAC-SHA256(key, value) when `MLPIPE_PSEUDONYM_KEY`
//! holds a key, or of SHA-256(value) without one. A pseudonym is stable across runs (the same
//! customer has the same pseudonym in every run's scores), so downstream systems join on it by
//! computing the same function (`hmac.new(key, id.encode(), "sha256").hexdigest()[:32]` in
//! Python). Unkeyed, the log mask (`mask_pii`, 12 hex characters of SHA-256) is a prefix of the
//! pseudonym, so an operator can find a logged record in the tables.
//!
//! Without a key, anyone who can enumerate likely ids can reverse the SHA-256; production
//! deployments set the key (from a secret store) so that only its holders can.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The environment variable holding the pseudonym key.
pub const KEY_VAR: &str = "MLPIPE_PSEUDONYM_KEY";
/// Hex characters kept: 128 bits, no collision among billions of ids.
pub const HEX_LEN: usize = 32;
const MIN_KEY_BYTES: usize = 16;
const BLOCK: usize = 64;

/// How pseudonyms are made: SHA-256, or HMAC-SHA256 with a secret key. The key never appears in
/// `Debug` output, manifests or logs; [`Pseudonyms::scheme`] names it by a fingerprint.
#[derive(Clone, Default)]
pub struct Pseudonyms {
    hmac: Option<Arc<HmacState>>,
}

struct HmacState {
    inner: Sha256,
    outer: Sha256,
    id: String,
}

impl std::fmt::Debug for Pseudonyms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.scheme())
    }
}

impl Pseudonyms {
    /// Keyed pseudonyms (HMAC-SHA256). The key must have at least 16 bytes.
    pub fn keyed(key: &[u8]) -> Result<Self> {
        if key.len() < MIN_KEY_BYTES {
            return Err(Error::Usage(format!(
                "{KEY_VAR} has {} bytes; a pseudonym key needs at least {MIN_KEY_BYTES} (e.g. `openssl rand -hex 32`)",
                key.len()
            )));
        }
        let mut k = [0u8; BLOCK];
        if key.len() > BLOCK {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let pad = |x: u8| {
            let mut h = Sha256::new();
            h.update(k.map(|b| b ^ x));
            h
        };
        let id = hex::encode(Sha256::digest(
            [b"mlpipe pseudonym key:".as_slice(), key].concat(),
        ))[..8]
            .to_string();
        Ok(Self {
            hmac: Some(Arc::new(HmacState {
                inner: pad(0x36),
                outer: pad(0x5c),
                id,
            })),
        })
    }

    /// From `MLPIPE_PSEUDONYM_KEY`: keyed when it is set and not empty.
    pub fn from_env() -> Result<Self> {
        match std::env::var(KEY_VAR) {
            Ok(k) if !k.is_empty() => Self::keyed(k.as_bytes()),
            _ => Ok(Self::default()),
        }
    }

    /// What the manifest and stage fingerprints record: `sha256`, or `hmac-sha256` with the
    /// key's fingerprint (so that changing the key re-runs the stages that write pseudonyms).
    pub fn scheme(&self) -> String {
        match &self.hmac {
            None => "sha256".into(),
            Some(s) => format!("hmac-sha256 (key {})", s.id),
        }
    }

    /// The pseudonym of one value.
    pub fn of(&self, value: &str) -> String {
        let mut out = [0u8; HEX_LEN];
        self.write(value, &mut out);
        String::from_utf8(out.to_vec()).expect("hex digits are ASCII")
    }

    /// Writes the pseudonym of `value` (its [`HEX_LEN`] hex digits) into `out`.
    fn write(&self, value: &str, out: &mut [u8; HEX_LEN]) {
        let d = match &self.hmac {
            None => Sha256::digest(value.as_bytes()),
            Some(s) => {
                let mut i = s.inner.clone();
                i.update(value.as_bytes());
                let mut o = s.outer.clone();
                o.update(i.finalize());
                o.finalize()
            }
        };
        hex::encode_to_slice(&d[..HEX_LEN / 2], out).expect("HEX_LEN is twice the bytes");
    }

    /// The pseudonyms of a text column, nulls kept. Every pseudonym has [`HEX_LEN`] bytes, so
    /// the offsets are known up front and blocks of rows fill their part of one value buffer in
    /// parallel (no `String` per row).
    fn column(&self, text: &StringArray) -> Result<StringArray> {
        const ROWS: usize = 16 * 1024;
        let n = text.len();
        let valid = n - text.null_count();
        if valid.saturating_mul(HEX_LEN) > i32::MAX as usize {
            return Err(Error::Data(format!(
                "{valid} personal-data values are more pseudonyms than one text column holds (2 GiB); split the dataset into several files"
            )));
        }
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0i32);
        let mut at = 0i32;
        for r in 0..n {
            at += if text.is_valid(r) { HEX_LEN as i32 } else { 0 };
            offsets.push(at);
        }
        let mut values = vec![0u8; at as usize];
        let mut blocks = Vec::with_capacity(n.div_ceil(ROWS));
        let mut rest = values.as_mut_slice();
        for start in (0..n).step_by(ROWS) {
            let end = (start + ROWS).min(n);
            let (block, tail) =
                std::mem::take(&mut rest).split_at_mut((offsets[end] - offsets[start]) as usize);
            blocks.push((start..end, block));
            rest = tail;
        }
        blocks.into_par_iter().for_each(|(rows, block)| {
            let mut out = block.chunks_exact_mut(HEX_LEN);
            for r in rows.filter(|&r| text.is_valid(r)) {
                let slot = out.next().expect("one slot per valid row");
                self.write(text.value(r), slot.try_into().expect("HEX_LEN bytes"));
            }
        });
        let nulls = text.nulls().filter(|n| n.null_count() > 0).cloned();
        StringArray::try_new(OffsetBuffer::new(offsets.into()), values.into(), nulls)
            .map_err(|e| Error::Infra(format!("internal: pseudonym column: {e}")))
    }

    /// `batch` with each of `columns` (those present) replaced by its pseudonyms, as text. Nulls
    /// stay null; other types are pseudonymised in their text form.
    pub fn apply(&self, batch: &RecordBatch, columns: &[String]) -> Result<RecordBatch> {
        if !columns.iter().any(|c| batch.column_by_name(c).is_some()) {
            return Ok(batch.clone());
        }
        let schema = batch.schema();
        let mut fields: Vec<Field> = Vec::with_capacity(batch.num_columns());
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
        for (f, a) in schema.fields().iter().zip(batch.columns()) {
            if columns.contains(f.name()) {
                let text = arrow::compute::cast(a, &DataType::Utf8).map_err(|e| {
                    Error::Data(format!(
                        "personal-data column `{}` cannot be read as text to pseudonymise it: {e}",
                        f.name()
                    ))
                })?;
                fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
                cols.push(Arc::new(self.column(text.as_string::<i32>())?));
            } else {
                fields.push(f.as_ref().clone());
                cols.push(a.clone());
            }
        }
        RecordBatch::try_new(
            Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
            cols,
        )
        .map_err(|e| Error::Infra(format!("pseudonymising: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Python:
    //   hashlib.sha256(v.encode()).hexdigest()[:32]
    //   hmac.new(b"0123456789abcdef-test-key", v.encode(), hashlib.sha256).hexdigest()[:32]
    //   hmac.new(b"k" * 100, b"alice", hashlib.sha256).hexdigest()[:32]   (key longer than a block)
    const CASES: [(&str, &str, &str); 3] = [
        (
            "C0000000001",
            "e924c4997b5e79a97f03b6bbf00adad1",
            "afe2daafbd216d703557e5d383c4e0d5",
        ),
        (
            "alice",
            "2bd806c97f0e00af1a1fc3328fa763a9",
            "e574d7c57c8410187a6670283e42082e",
        ),
        (
            "",
            "e3b0c44298fc1c149afbf4c8996fb924",
            "4e838db83ed9d61d67486e03584555d1",
        ),
    ];

    #[test]
    fn pseudonyms_match_pythons_hashlib_and_hmac() {
        let plain = Pseudonyms::default();
        let keyed = Pseudonyms::keyed(b"0123456789abcdef-test-key").unwrap();
        for (v, sha, mac) in CASES {
            assert_eq!(plain.of(v), sha, "{v}");
            assert_eq!(keyed.of(v), mac, "{v}");
        }
        assert_eq!(
            Pseudonyms::keyed(&[b'k'; 100]).unwrap().of("alice"),
            "bb3371a06e0b7cdbf3413fd51417624e"
        );
        // The log mask is a prefix of the unkeyed pseudonym.
        assert!(plain
            .of("C0000000001")
            .starts_with(&crate::telemetry::mask_pii("C0000000001")));
    }

    #[test]
    fn short_keys_are_refused_and_keys_never_printed() {
        let e = Pseudonyms::keyed(b"short").unwrap_err().to_string();
        assert!(e.contains(KEY_VAR) && e.contains("16"), "{e}");
        let k = Pseudonyms::keyed(b"0123456789abcdef-test-key").unwrap();
        let shown = format!("{k:?} {}", k.scheme());
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.starts_with("hmac-sha256 (key "), "{shown}");
        assert_eq!(Pseudonyms::default().scheme(), "sha256");
    }

    #[test]
    fn apply_replaces_only_the_listed_columns_and_keeps_nulls() {
        let b = RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(arrow::array::LargeStringArray::from(vec![
                    Some("alice"),
                    None,
                ])) as ArrayRef,
            ),
            (
                "n",
                Arc::new(arrow::array::Int32Array::from(vec![1, 2])) as ArrayRef,
            ),
        ])
        .unwrap();
        let out = Pseudonyms::default()
            .apply(&b, &["id".to_string(), "absent".to_string()])
            .unwrap();
        let id = out.column(0).as_string::<i32>();
        assert_eq!(id.value(0), CASES[1].1);
        assert!(id.is_null(1));
        assert_eq!(out.column(1), b.column(1));
        assert_eq!(out.schema().field(0).name(), "id");
    }

    #[test]
    fn a_column_of_pseudonyms_is_each_value_pseudonymised() {
        // Several 16 Ki-row blocks, nulls in runs and alone, and a block that ends in a null.
        let n = 40_000;
        let text: StringArray = (0..n)
            .map(|i| (i % 7 != 3 && !(16_000..16_400).contains(&i)).then(|| format!("C{i:010}")))
            .collect();
        for ps in [
            Pseudonyms::default(),
            Pseudonyms::keyed(b"0123456789abcdef-test-key").unwrap(),
        ] {
            let out = ps.column(&text).unwrap();
            assert_eq!(out.len(), n);
            assert_eq!(out.null_count(), text.null_count());
            for r in 0..n {
                match text.is_valid(r) {
                    true => assert_eq!(out.value(r), ps.of(text.value(r)), "row {r}"),
                    false => assert!(out.is_null(r), "row {r}"),
                }
            }
        }
        // No nulls: no null buffer, as the column built value by value had none.
        let full: StringArray = (0..100).map(|i| Some(format!("{i}"))).collect();
        let out = Pseudonyms::default().column(&full).unwrap();
        assert!(out.nulls().is_none() && out.value(42) == Pseudonyms::default().of("42"));
    }
}
