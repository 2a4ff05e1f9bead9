//! Writes Arrow record batches as Parquet, deterministically: the same rows give the same bytes.

use std::collections::HashSet;

use arrow::array::Array;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use object_store::PutPayload;
use parquet::arrow::arrow_writer::compute_leaves;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Rows per row group: small enough for readers to parallelise, large enough to compress well.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Encodes batches (all of one schema) as one Parquet file, in one contiguous buffer.
pub fn to_parquet(batches: &[RecordBatch]) -> Result<Bytes> {
    Ok(Bytes::from(encode(batches, Vec::new())?))
}

/// Encodes batches as one Parquet file in pieces of [`CHUNK_BYTES`], ready to store. A large
/// file (a clean table at 10 M customers is over 400 MB) is never copied into a bigger buffer
/// as it grows, and the pieces' memory is reused for the next file once this one is stored.
pub fn to_parquet_chunks(batches: &[RecordBatch]) -> Result<PutPayload> {
    Ok(encode(batches, Chunks::new(CHUNK_BYTES))?.finish())
}

/// Bytes per piece of [`to_parquet_chunks`].
pub const CHUNK_BYTES: usize = 8 << 20;

/// A `Write` that fills pieces of `size` bytes instead of one growing buffer.
pub struct Chunks {
    size: usize,
    done: Vec<Bytes>,
    current: Vec<u8>,
}

impl Chunks {
    fn new(size: usize) -> Self {
        Chunks {
            size,
            done: Vec::new(),
            current: Vec::new(),
        }
    }

    fn finish(mut self) -> PutPayload {
        if !self.current.is_empty() {
            self.done.push(Bytes::from(self.current));
        }
        PutPayload::from_iter(self.done)
    }
}

impl std::io::Write for Chunks {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            if self.current.len() == self.size {
                let full = std::mem::replace(&mut self.current, Vec::with_capacity(self.size));
                self.done.push(Bytes::from(full));
            } else if self.current.capacity() == 0 {
                self.current.reserve_exact(self.size);
            }
            let take = (self.size - self.current.len()).min(buf.len());
            self.current.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encodes batches (all of one schema) as one Parquet file into `out`.
fn encode<W: std::io::Write + Send>(batches: &[RecordBatch], out: W) -> Result<W> {
    let first = batches
        .first()
        .ok_or_else(|| Error::Infra("internal: no batch to write".into()))?;
    let mut e = Encoder::new(first, out)?;
    for b in batches {
        e.push(b.clone())?;
    }
    e.finish()
}

/// A Parquet file written batch by batch, as the batches arrive (a query's result): each row
/// group is encoded once [`ROW_GROUP_ROWS`] rows are in, so only one group's rows are held.
pub struct Encoder<W: std::io::Write + Send> {
    schema: arrow::datatypes::SchemaRef,
    inner: Inner<W>,
    /// Batches of the row group being filled, and their rows.
    pending: Vec<RecordBatch>,
    rows: usize,
    groups: usize,
}

enum Inner<W: std::io::Write + Send> {
    /// A nested column has several leaves; such tables are small here, written in order.
    Nested(ArrowWriter<W>),
    Flat(
        parquet::file::writer::SerializedFileWriter<W>,
        parquet::arrow::arrow_writer::ArrowRowGroupWriterFactory,
    ),
}

fn fail(e: parquet::errors::ParquetError) -> Error {
    Error::Infra(format!("cannot encode Parquet: {e}"))
}

/// Batches re-cut into whole row groups: each batch out holds [`ROW_GROUP_ROWS`] rows (the last
/// what remains). A column writer cuts pages where its input batches end, so a table encoded
/// from whole row groups has the same bytes however the batches that brought it were cut.
pub struct Regroup {
    schema: arrow::datatypes::SchemaRef,
    pending: Vec<RecordBatch>,
    rows: usize,
}

impl Regroup {
    pub fn new(schema: arrow::datatypes::SchemaRef) -> Regroup {
        Regroup {
            schema,
            pending: Vec::new(),
            rows: 0,
        }
    }

    /// Takes a batch; gives the row groups it completes.
    pub fn push(&mut self, b: RecordBatch) -> Result<Vec<RecordBatch>> {
        self.rows += b.num_rows();
        self.pending.push(b);
        let mut out = Vec::new();
        while self.rows >= ROW_GROUP_ROWS {
            let all = self.concat()?;
            out.push(all.slice(0, ROW_GROUP_ROWS));
            let rest = all.slice(ROW_GROUP_ROWS, all.num_rows() - ROW_GROUP_ROWS);
            self.rows = rest.num_rows();
            self.pending = vec![rest];
        }
        Ok(out)
    }

    /// The last, partial row group (none if no rows are left).
    pub fn finish(&mut self) -> Result<Option<RecordBatch>> {
        let last = (self.rows > 0).then(|| self.concat()).transpose()?;
        self.rows = 0;
        Ok(last)
    }

    fn concat(&mut self) -> Result<RecordBatch> {
        arrow::compute::concat_batches(&self.schema, &std::mem::take(&mut self.pending))
            .map_err(|e| Error::Infra(format!("cannot gather a row group: {e}")))
    }
}

/// A streaming encoder into pieces of [`CHUNK_BYTES`] (see [`to_parquet_chunks`]).
pub fn chunked_encoder(first: &RecordBatch) -> Result<Encoder<Chunks>> {
    Encoder::new(first, Chunks::new(CHUNK_BYTES))
}

impl Encoder<Chunks> {
    /// The file, ready to store.
    pub fn finish_payload(self) -> Result<PutPayload> {
        Ok(self.finish()?.finish())
    }
}

impl<W: std::io::Write + Send> Encoder<W> {
    /// An encoder for batches of `first`'s schema, with the settings [`properties`] picks for it
    /// (from its first [`DICTIONARY_SAMPLE`] rows: a streamed table's bytes do not depend on
    /// where its batches were cut when `first` holds at least that many rows).
    pub fn new(first: &RecordBatch, out: W) -> Result<Self> {
        let schema = first.schema();
        let w = ArrowWriter::try_new(out, schema.clone(), Some(properties(first))).map_err(fail)?;
        let inner = if schema.fields().iter().any(|f| f.data_type().is_nested()) {
            Inner::Nested(w)
        } else {
            let (file, factory) = w.into_serialized_writer().map_err(fail)?;
            Inner::Flat(file, factory)
        };
        Ok(Encoder {
            schema,
            inner,
            pending: Vec::new(),
            rows: 0,
            groups: 0,
        })
    }

    /// Adds a batch; encodes every row group it completes.
    pub fn push(&mut self, b: RecordBatch) -> Result<()> {
        if let Inner::Nested(w) = &mut self.inner {
            return w.write(&b).map_err(fail);
        }
        let mut rest = b;
        while rest.num_rows() > 0 {
            let take = (ROW_GROUP_ROWS - self.rows).min(rest.num_rows());
            self.pending.push(rest.slice(0, take));
            rest = rest.slice(take, rest.num_rows() - take);
            self.rows += take;
            if self.rows == ROW_GROUP_ROWS {
                self.flush_group()?;
            }
        }
        Ok(())
    }

    /// Each row group's columns are encoded at once, one task a column, and appended in order.
    /// Every column writer gets the same slices `ArrowWriter::write` would give it, so the bytes
    /// are the ones it writes (the fixtures' byte-for-byte test holds them to that).
    fn flush_group(&mut self) -> Result<()> {
        let Inner::Flat(file, factory) = &mut self.inner else {
            return Ok(());
        };
        let pieces = std::mem::take(&mut self.pending);
        self.rows = 0;
        if pieces.is_empty() {
            return Ok(());
        }
        let writers = factory.create_column_writers(self.groups).map_err(fail)?;
        self.groups += 1;
        let chunks = writers
            .into_par_iter()
            .zip(self.schema.fields().par_iter().enumerate())
            .map(|(mut w, (c, field))| {
                for p in &pieces {
                    for leaf in compute_leaves(field, p.column(c))? {
                        w.write(&leaf)?;
                    }
                }
                w.close()
            })
            .collect::<parquet::errors::Result<Vec<_>>>()
            .map_err(fail)?;
        let mut rg = file.next_row_group().map_err(fail)?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut rg).map_err(fail)?;
        }
        rg.close().map_err(fail)?;
        Ok(())
    }

    /// Encodes the last row group and the footer.
    pub fn finish(mut self) -> Result<W> {
        self.flush_group()?;
        match self.inner {
            Inner::Nested(w) => w.into_inner().map_err(fail),
            Inner::Flat(file, _) => file.into_inner().map_err(fail),
        }
    }
}

/// The writer's settings for batches like `first`: zstd level 1, [`ROW_GROUP_ROWS`]-row groups,
/// a fixed `created_by`, and no dictionary for the columns [`mostly_distinct`] picks. Those of
/// them that are text (keys, pseudonyms) get no min/max statistics either: the writer compared
/// every value with the running minimum and maximum (a `memcmp` each, a twentieth of the 1 M
/// validate stage), and the minimum and maximum of random keys prune nothing for a reader.
fn properties(first: &RecordBatch) -> WriterProperties {
    let mut props = WriterProperties::builder();
    for (field, column) in first.schema().fields().iter().zip(first.columns()) {
        if mostly_distinct(column.as_ref()) {
            let path = ColumnPath::from(field.name().as_str());
            props = props.set_column_dictionary_enabled(path.clone(), false);
            if matches!(field.data_type(), DataType::Utf8 | DataType::LargeUtf8) {
                props = props.set_column_statistics_enabled(path, EnabledStatistics::None);
            }
        }
    }
    props
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid zstd level"),
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("mlpipe {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Rows sampled by [`mostly_distinct`].
pub const DICTIONARY_SAMPLE: usize = 4096;

/// Whether a column's first rows are mostly distinct values (more than half), so that a
/// dictionary would not pay: the writer would hash every value into a dictionary that outgrows
/// its page limit and then falls back to plain encoding anyway. Keys, pseudonyms, amounts and
/// predictions are written plain from the start (at 1 M customers the dictionary attempts were
/// about 40 % of the Parquet encoding time). Text and fixed-width columns are sampled; other
/// types and short columns keep the writer's default.
fn mostly_distinct(a: &dyn Array) -> bool {
    let n = a.len().min(DICTIONARY_SAMPLE);
    if n < DICTIONARY_SAMPLE {
        return false;
    }
    let Some(values) = super::ValueBytes::of(a) else {
        return false;
    };
    let distinct = (0..n)
        .filter(|&i| a.is_valid(i))
        .map(|i| values.get(i))
        .collect::<HashSet<&[u8], foldhash::fast::FixedState>>()
        .len();
    distinct * 2 > n
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use std::sync::Arc;

    /// Columns encoded in parallel give the bytes `ArrowWriter` gives for the same batches, across
    /// row groups and batches of any size (empty ones too).
    #[test]
    fn parallel_encoding_writes_what_arrow_writer_writes() {
        let n = 2 * ROW_GROUP_ROWS + 12_345;
        let batch = RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("c{i}")),
                )) as ArrayRef,
            ),
            (
                "plan",
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 7 != 0).then_some(["basic", "pro"][i % 2])),
                )) as ArrayRef,
            ),
            (
                "amount",
                Arc::new(Float64Array::from_iter_values(
                    (0..n).map(|i| i as f64 * 0.37),
                )) as ArrayRef,
            ),
        ])
        .unwrap();
        let cuts = [0, 100_000, 100_000, 170_000, ROW_GROUP_ROWS * 2, n];
        let batches: Vec<RecordBatch> = cuts
            .windows(2)
            .map(|w| batch.slice(w[0], w[1] - w[0]))
            .collect();
        let ours = to_parquet(&batches).unwrap();
        // The reference: the same properties through ArrowWriter, batch by batch.
        let props = properties(&batches[0]);
        let mut want = Vec::new();
        let mut w = ArrowWriter::try_new(&mut want, batch.schema(), Some(props)).unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.close().unwrap();
        let reader = SerializedFileReader::new(ours.clone()).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 3);
        assert!(
            ours.as_ref() == want.as_slice(),
            "bytes differ from ArrowWriter's"
        );
        // In pieces: the same bytes, every piece but the last full.
        let pieces = encode(&batches, Chunks::new(4099)).unwrap().finish();
        let sizes: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
        assert!(sizes.len() > 2 && sizes[..sizes.len() - 1].iter().all(|&n| n == 4099));
        assert!(pieces.iter().flatten().copied().eq(ours.iter().copied()));
        assert_eq!(
            to_parquet_chunks(&batches).unwrap().content_length(),
            ours.len()
        );
    }

    /// A streamed table (a query's result) gives the same bytes however its batches were cut,
    /// once they are regrouped into whole row groups.
    #[test]
    fn a_streamed_table_does_not_depend_on_its_batch_boundaries() {
        let n = ROW_GROUP_ROWS + 5_000;
        let batch = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("c{i}")),
            )) as ArrayRef,
        )])
        .unwrap();
        let stream = |cuts: &[usize]| {
            let mut e = chunked_encoder(&batch.slice(0, cuts[1])).unwrap();
            for w in cuts.windows(2) {
                e.push(batch.slice(w[0], w[1] - w[0])).unwrap();
            }
            let p = e.finish_payload().unwrap();
            p.iter().flatten().copied().collect::<Vec<u8>>()
        };
        let whole = to_parquet(&[batch.clone()]).unwrap();
        assert!(stream(&[0, n]) == whole.as_ref());
        assert!(stream(&[0, ROW_GROUP_ROWS, n]) == whole.as_ref());
        // Cut anywhere, then regrouped: the same bytes.
        let mut g = Regroup::new(batch.schema());
        let mut groups = Vec::new();
        for w in [0, 100, 8192, 8193, 100_000, ROW_GROUP_ROWS + 1, n].windows(2) {
            groups.extend(g.push(batch.slice(w[0], w[1] - w[0])).unwrap());
        }
        groups.extend(g.finish().unwrap());
        assert_eq!(
            groups.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
            [ROW_GROUP_ROWS, 5_000]
        );
        let mut e = chunked_encoder(&groups[0]).unwrap();
        for b in groups {
            e.push(b).unwrap();
        }
        let p = e.finish_payload().unwrap();
        assert!(p.iter().flatten().copied().eq(whole.iter().copied()));
    }

    /// Mostly distinct columns are written without a dictionary, repetitive ones with one, and
    /// every value reads back.
    #[test]
    fn dictionaries_only_where_values_repeat() {
        let n = 10_000;
        let batch = RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("c{i}")),
                )) as ArrayRef,
            ),
            (
                "plan",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| ["basic", "pro"][i % 2]),
                )) as ArrayRef,
            ),
            (
                "amount",
                Arc::new(Float64Array::from_iter_values(
                    (0..n).map(|i| i as f64 * 0.37),
                )) as ArrayRef,
            ),
            (
                "tenure",
                Arc::new(Int64Array::from_iter_values(
                    (0..n).map(|i| (i % 60) as i64),
                )) as ArrayRef,
            ),
        ])
        .unwrap();
        // The sample starts past a slice's offset.
        let sliced = batch.slice(5, n - 5);
        for b in [&batch, &sliced] {
            let bytes = to_parquet(std::slice::from_ref(b)).unwrap();
            let reader = SerializedFileReader::new(bytes.clone()).unwrap();
            let rg = reader.metadata().row_group(0);
            let dict = |c: usize| rg.column(c).dictionary_page_offset().is_some();
            assert!(!dict(0) && dict(1) && !dict(2) && dict(3));
            // No min/max for the distinct text; the others keep theirs.
            let stats = |c: usize| rg.column(c).statistics().is_some();
            assert!(!stats(0) && stats(1) && stats(2) && stats(3));
            let back: Vec<RecordBatch> =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .unwrap()
                    .build()
                    .unwrap()
                    .collect::<std::result::Result<_, _>>()
                    .unwrap();
            let back = arrow::compute::concat_batches(&back[0].schema(), &back).unwrap();
            assert_eq!(back.columns(), b.columns());
        }
    }
}
