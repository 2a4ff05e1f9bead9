//! Tabular data: the schema adapter, the streaming Parquet reader and the Parquet writer.
//! Arrow arrays are the in-memory form everywhere; Parquet is the only file format.

pub mod adapt;
pub mod pseudonym;
pub mod reader;
pub mod writer;

use arrow::record_batch::RecordBatch;

use crate::storage::ObjectInfo;

/// A dataset read into memory in its declared, canonical schema.
#[derive(Debug, Clone)]
pub struct Table {
    /// The declared columns, in declaration order, with canonical types.
    pub batch: RecordBatch,
    /// Per column, the rows whose value was present but did not convert to the declared type.
    pub unparseable: Vec<(String, Vec<u32>)>,
    /// The files read, in order.
    pub files: Vec<ObjectInfo>,
}

impl Table {
    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }
}
