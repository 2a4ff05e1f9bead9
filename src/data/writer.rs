//! Writes Arrow record batches as Parquet, deterministically: the same rows give the same bytes.

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};

/// Rows per row group: small enough for readers to parallelise, large enough to compress well.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Encodes batches (all of one schema) as one Parquet file.
pub fn to_parquet(batches: &[RecordBatch]) -> Result<Bytes> {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| Error::Infra("internal: no batch to write".into()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid zstd level"),
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("mlpipe {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema, Some(props))
        .map_err(|e| Error::Infra(format!("cannot encode Parquet: {e}")))?;
    for b in batches {
        w.write(b)
            .map_err(|e| Error::Infra(format!("cannot encode Parquet: {e}")))?;
    }
    w.close()
        .map_err(|e| Error::Infra(format!("cannot encode Parquet: {e}")))?;
    Ok(Bytes::from(buf))
}
