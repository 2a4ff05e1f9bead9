//! The streaming Parquet reader: lists a dataset's files through a [`Store`], reads only the
//! declared columns of each (column projection), adapts every batch to the declared schema and
//! appends it to the dataset's columns, file by file.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    new_null_array, ArrayRef, AsArray, BooleanBuilder, PrimitiveBuilder, StringArray, StringBuilder,
};
use arrow::datatypes::{
    DataType, Date32Type, Field, Float64Type, Int32Type, Int64Type, Schema,
    TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use futures::{StreamExt, TryStreamExt};
#[allow(deprecated)] // see docs/ARCHITECTURE.md: replaced when a spawned reader is needed
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use sha2::{Digest, Sha256};

use super::adapt::{adapt, canonical_type};
use super::Table;
use crate::config::{Column, Dataset};
use crate::error::{Error, Result};
use crate::storage::{join_url, ObjectInfo, Store};

const BATCH_ROWS: usize = 64 * 1024;
const FILES_IN_FLIGHT: usize = 4;

/// Where a dataset's files are: the store they are under and their paths relative to it.
#[derive(Debug, Clone)]
pub struct Located {
    pub store: Store,
    pub files: Vec<ObjectInfo>,
    /// The dataset location as a URL, for messages.
    pub url: String,
}

impl Located {
    /// A fingerprint of the files' names, sizes and versions: changes when any file changes.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for f in &self.files {
            h.update(f.path.as_bytes());
            h.update(f.size.to_le_bytes());
            h.update(f.e_tag.as_deref().unwrap_or(&f.last_modified).as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    }
}

/// Lists the Parquet files of a location: a file, a folder (recursively, hive partitions
/// included; names starting with `_` or `.` are skipped) or a glob (`*`, `?`, `**`).
pub async fn locate(data_root: &str, location: &str) -> Result<Located> {
    let url = if location.contains("://") {
        location.to_string()
    } else {
        join_url(data_root, location)
    };
    let (scheme_host, path) = split_url(&url);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let glob_at = segments.iter().position(|s| s.contains(['*', '?']));
    let (store, files) = if let Some(g) = glob_at {
        let base = format!("{scheme_host}/{}", segments[..g].join("/"));
        let pattern = segments[g..].join("/");
        let store = Store::open(&base)?;
        let files = store
            .list("")
            .await?
            .into_iter()
            .filter(|f| glob_match(&pattern, &f.path))
            .collect();
        (store, files)
    } else if path.ends_with(".parquet") || path.ends_with(".parq") {
        let name = segments.last().copied().unwrap_or_default();
        let base = format!(
            "{scheme_host}/{}",
            segments[..segments.len().saturating_sub(1)].join("/")
        );
        let store = Store::open(&base)?;
        let files = store.head(name).await?.into_iter().collect();
        (store, files)
    } else {
        let store = Store::open(&url)?;
        let files = store.list("").await?;
        (store, files)
    };
    let files: Vec<ObjectInfo> = files
        .into_iter()
        .filter(|f| {
            let name = f.path.rsplit('/').next().unwrap_or(&f.path);
            !name.starts_with(['_', '.'])
                && (name.ends_with(".parquet") || name.ends_with(".parq") || glob_at.is_some())
        })
        .collect();
    Ok(Located { store, files, url })
}

fn split_url(url: &str) -> (String, String) {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            if scheme == "file" {
                (format!("{scheme}://"), rest.to_string())
            } else {
                let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                (format!("{scheme}://{host}"), path.to_string())
            }
        }
        None => (String::new(), url.to_string()),
    }
}

/// Matches a relative path against a glob: `*` and `?` within one segment, `**` across segments.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn seg(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => seg(&p[1..], s) || (!s.is_empty() && seg(p, &s[1..])),
            (Some(b'?'), Some(_)) => seg(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => seg(&p[1..], &s[1..]),
            _ => false,
        }
    }
    fn parts(p: &[&str], s: &[&str]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(&"**"), _) => parts(&p[1..], s) || (!s.is_empty() && parts(p, &s[1..])),
            (Some(a), Some(b)) => seg(a.as_bytes(), b.as_bytes()) && parts(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    parts(&p, &s)
}

/// `key=value` folder names in a path (hive partitioning).
fn partitions(path: &str) -> BTreeMap<String, String> {
    path.split('/')
        .rev()
        .skip(1)
        .filter_map(|s| s.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Reads a dataset's declared columns (or the `only` subset) from every file of `located`.
pub async fn read_dataset(
    ds: &Dataset,
    located: &Located,
    only: Option<&[String]>,
) -> Result<Table> {
    if located.files.is_empty() {
        return Err(Error::Data(format!(
            "dataset `{}`: no Parquet files at {}; check datasets.{}.location or pass --input {}=URL",
            ds.name, located.url, ds.name, ds.name
        )));
    }
    let columns: Arc<Vec<Column>> = Arc::new(
        ds.columns
            .iter()
            .filter(|c| only.is_none_or(|o| o.contains(&c.name)))
            .cloned()
            .collect(),
    );
    let ds_owned = Arc::new(ds.clone());
    let reads = located.files.iter().cloned().map(|f| {
        let (ds, columns, store) = (ds_owned.clone(), columns.clone(), located.store.clone());
        async move {
            let url = store.url_of(&f.path);
            let read = read_file(&ds, &columns, &store, &f);
            guard_panics(
                read,
                || {
                    format!(
                        "dataset `{}`: {url} is not a readable Parquet file",
                        ds.name
                    )
                },
                "replace or remove it",
            )
            .await
        }
    });
    // Each file's columns are appended to the dataset's as the file arrives (in order), and its
    // decoded pieces are then dropped: at most FILES_IN_FLIGHT files' pieces are alive beside
    // the table, and the allocator reuses their memory for the next files.
    let mut per_file = futures::stream::iter(reads).buffered(FILES_IN_FLIGHT);
    let mut assembly: Option<Assembly> = None;
    let mut offset = 0u32;
    let mut bad: Vec<Bad> = vec![Bad::default(); columns.len()];
    // The columns are sized from the first file, scaled by the files' sizes with a tenth to
    // spare, so they are not copied as they grow unless the files differ a lot. An overestimate
    // costs address space, not memory (pages never written are not taken); it is capped at four
    // times the files' count.
    let total_bytes: u64 = located.files.iter().map(|f| f.size).sum();
    let scale = (1.1 * total_bytes.max(1) as f64 / located.files[0].size.max(1) as f64)
        .min(4.0 * located.files.len() as f64);
    while let Some((cols, unparseable, rows)) = per_file.try_next().await? {
        let assembly = assembly.get_or_insert_with(|| Assembly::new(&columns, &cols, rows, scale));
        assembly.append(cols).map_err(|e| {
            Error::Infra(format!(
                "dataset `{}`: cannot assemble columns: {e}",
                ds.name
            ))
        })?;
        for (b, u) in bad.iter_mut().zip(unparseable) {
            b.rows.extend(u.rows.iter().map(|r| r + offset));
            b.out_of_range
                .extend(u.out_of_range.into_iter().map(|(r, v)| (r + offset, v)));
        }
        offset += rows as u32;
    }
    let fields: Vec<Field> = columns
        .iter()
        .map(|c| Field::new(&c.name, canonical_type(c.ty), true))
        .collect();
    let assembled = assembly.expect("at least one file was read").finish();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), assembled)
        .map_err(|e| Error::Infra(format!("dataset `{}`: {e}", ds.name)))?;
    let (mut unparseable, mut out_of_range) = (Vec::new(), Vec::new());
    for (c, b) in columns.iter().zip(bad) {
        if !b.rows.is_empty() {
            unparseable.push((c.name.clone(), b.rows));
        }
        if !b.out_of_range.is_empty() {
            out_of_range.push((c.name.clone(), b.out_of_range));
        }
    }
    Ok(Table {
        batch,
        unparseable,
        out_of_range,
        files: located.files.clone(),
    })
}

/// A column's values that did not convert: their rows, and of those the whole numbers beyond
/// the declared integer type with their text.
#[derive(Debug, Clone, Default)]
struct Bad {
    rows: Vec<u32>,
    out_of_range: Vec<(u32, String)>,
}

/// Per column the file's pieces of it and what did not convert; the file's row count.
type FileColumns = (Vec<Vec<ArrayRef>>, Vec<Bad>, usize);

/// A dataset's columns, built up file by file: one builder a column, sized up front, with the
/// column's canonical type ([`canonical_type`]).
struct Assembly(Vec<(DataType, Growing)>);

/// One column being built.
enum Growing {
    Utf8(StringBuilder),
    Bool(BooleanBuilder),
    Int32(PrimitiveBuilder<Int32Type>),
    Int64(PrimitiveBuilder<Int64Type>),
    Float64(PrimitiveBuilder<Float64Type>),
    Date32(PrimitiveBuilder<Date32Type>),
    Timestamp(PrimitiveBuilder<TimestampMicrosecondType>),
}

impl Assembly {
    /// Builders for `columns` with room for `scale` times the first file's rows and text.
    fn new(columns: &[Column], first: &[Vec<ArrayRef>], rows: usize, scale: f64) -> Self {
        let room = |n: usize| (n as f64 * scale).ceil() as usize;
        let builders = columns
            .iter()
            .zip(first)
            .map(|(c, pieces)| {
                let ty = canonical_type(c.ty);
                let builder = match &ty {
                    DataType::Utf8 => {
                        let bytes: usize = pieces
                            .iter()
                            .filter_map(|p| p.as_string_opt::<i32>())
                            .map(|s| {
                                s.value_offsets().last().copied().unwrap_or(0) as usize
                                    - s.value_offsets().first().copied().unwrap_or(0) as usize
                            })
                            .sum();
                        Growing::Utf8(StringBuilder::with_capacity(room(rows), room(bytes)))
                    }
                    DataType::Boolean => Growing::Bool(BooleanBuilder::with_capacity(room(rows))),
                    DataType::Int32 => Growing::Int32(PrimitiveBuilder::with_capacity(room(rows))),
                    DataType::Int64 => Growing::Int64(PrimitiveBuilder::with_capacity(room(rows))),
                    DataType::Float64 => {
                        Growing::Float64(PrimitiveBuilder::with_capacity(room(rows)))
                    }
                    DataType::Date32 => {
                        Growing::Date32(PrimitiveBuilder::with_capacity(room(rows)))
                    }
                    DataType::Timestamp(..) => Growing::Timestamp(
                        PrimitiveBuilder::with_capacity(room(rows)).with_data_type(ty.clone()),
                    ),
                    t => unreachable!("no column has canonical type {t}"),
                };
                (ty, builder)
            })
            .collect();
        Assembly(builders)
    }

    /// Appends one file's pieces of every column, in order. A piece of another type than its
    /// column's is an error (the builders would panic on it).
    fn append(&mut self, file: Vec<Vec<ArrayRef>>) -> std::result::Result<(), String> {
        for ((ty, g), pieces) in self.0.iter_mut().zip(file) {
            for p in &pieces {
                if p.data_type() != ty {
                    return Err(format!(
                        "internal: a piece of type {} in a column of type {ty}",
                        p.data_type()
                    ));
                }
                g.append(p)?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Vec<ArrayRef> {
        self.0.into_iter().map(|(_, g)| g.finish()).collect()
    }
}

impl Growing {
    /// Appends a piece already known to have the column's type.
    fn append(&mut self, a: &ArrayRef) -> std::result::Result<(), String> {
        match self {
            Growing::Utf8(b) => b.append_array(a.as_string()).map_err(|e| e.to_string())?,
            Growing::Bool(b) => b.append_array(a.as_boolean()),
            Growing::Int32(b) => b.append_array(a.as_primitive()),
            Growing::Int64(b) => b.append_array(a.as_primitive()),
            Growing::Float64(b) => b.append_array(a.as_primitive()),
            Growing::Date32(b) => b.append_array(a.as_primitive()),
            Growing::Timestamp(b) => b.append_array(a.as_primitive()),
        }
        Ok(())
    }

    fn finish(self) -> ArrayRef {
        match self {
            Growing::Utf8(mut b) => Arc::new(b.finish()),
            Growing::Bool(mut b) => Arc::new(b.finish()),
            Growing::Int32(mut b) => Arc::new(b.finish()),
            Growing::Int64(mut b) => Arc::new(b.finish()),
            Growing::Float64(mut b) => Arc::new(b.finish()),
            Growing::Date32(mut b) => Arc::new(b.finish()),
            Growing::Timestamp(mut b) => Arc::new(b.finish()),
        }
    }
}

async fn read_file(
    ds: &Dataset,
    columns: &[Column],
    store: &Store,
    f: &ObjectInfo,
) -> Result<FileColumns> {
    let url = store.url_of(&f.path);
    let corrupt = |e: parquet::errors::ParquetError| {
        storage_failure(e, &url).unwrap_or_else(|e| {
            Error::Data(format!(
                "dataset `{}`: {url} is not a readable Parquet file ({e}); replace or remove it",
                ds.name
            ))
        })
    };
    let (os, path) = store.object(&f.path);
    #[allow(deprecated)]
    let reader = ParquetObjectReader::new(os, path).with_file_size(f.size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(corrupt)?;
    let file_schema = builder.schema().clone();
    let parts = partitions(&f.path);

    // Which file column feeds each declared column; missing ones may come from the path.
    let mut indices = Vec::new();
    for c in columns {
        match file_schema.index_of(&c.name) {
            Ok(i) => indices.push(i),
            Err(_) if parts.contains_key(&c.name) => {}
            Err(_) => {
                return Err(Error::Data(format!(
                    "dataset `{}`: {url} has no column `{}` (declared in datasets.{}.columns); \
                     fix the file or the declaration",
                    ds.name, c.name, ds.name
                )))
            }
        }
    }
    indices.sort_unstable();
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices.iter().copied());
    let stream = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(corrupt)?;
    let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(corrupt)?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();

    // Each column as the decoded batches' pieces, adapted one by one: the dataset's columns are
    // concatenated once, from every file's pieces (a per-file concatenation first copied every
    // value twice, which at 10 M rows was most of the load).
    let mut out = Vec::with_capacity(columns.len());
    let mut bad = Vec::with_capacity(columns.len());
    for c in columns {
        let raw: Vec<ArrayRef> = if file_schema.index_of(&c.name).is_ok() {
            let pieces: Vec<ArrayRef> = batches
                .iter()
                .map(|b| b.column_by_name(&c.name).expect("projected column").clone())
                .collect();
            if pieces.is_empty() {
                vec![new_null_array(
                    file_schema.field_with_name(&c.name).unwrap().data_type(),
                    0,
                )]
            } else {
                pieces
            }
        } else {
            vec![Arc::new(StringArray::from(vec![parts[&c.name].as_str(); rows])) as ArrayRef]
        };
        let (mut arrays, mut unparseable, mut start) = (Vec::new(), Bad::default(), 0u32);
        for piece in &raw {
            let adapted = adapt(piece, c.ty).map_err(|why| {
                Error::Data(format!(
                    "dataset `{}`: column `{}` in {url} {why}; it is declared {} in datasets.{}.columns",
                    ds.name,
                    c.name,
                    c.ty.name(),
                    ds.name
                ))
            })?;
            arrays.push(adapted.array);
            unparseable
                .rows
                .extend(adapted.unparseable.iter().map(|r| r + start));
            unparseable.out_of_range.extend(
                adapted
                    .out_of_range
                    .into_iter()
                    .map(|(r, v)| (r + start, v)),
            );
            start += piece.len() as u32;
        }
        out.push(arrays);
        bad.push(unparseable);
    }
    Ok((out, bad, rows))
}

/// A Parquet error that is really the storage failing (denied, unreachable): a storage error
/// (exit 4), not a corrupt file (exit 3).
fn storage_failure(
    e: parquet::errors::ParquetError,
    url: &str,
) -> std::result::Result<Error, parquet::errors::ParquetError> {
    match e {
        parquet::errors::ParquetError::External(inner) => {
            match inner.downcast::<object_store::Error>() {
                Ok(os) => Ok(crate::storage::fail("read", url, *os)),
                Err(other) => Err(parquet::errors::ParquetError::External(other)),
            }
        }
        e => Err(e),
    }
}

/// Runs a read, turning a panic inside the Parquet crate into a data error. Corrupt metadata can
/// make `parquet` assert instead of returning an error (`ColumnChunkMetaData::byte_range` on a
/// negative offset, found by `fuzz/fuzz_targets/parquet_file.rs`); a corrupt input file must be a
/// clear error, not a crashed stage.
async fn guard_panics<T>(
    read: impl std::future::Future<Output = Result<T>>,
    what: impl FnOnce() -> String,
    todo: &str,
) -> Result<T> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(read).catch_unwind().await {
        Ok(r) => r,
        Err(payload) => {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the Parquet reader failed on it".into());
            Err(Error::Data(format!("{} ({why}); {todo}", what())))
        }
    }
}

/// Reads a Parquet file written by a stage, as it is (no adaptation), checking it is the file
/// the stage recorded (`size` bytes, SHA-256 `sha256`) as its bytes arrive.
pub async fn read_parquet(
    store: &Store,
    rel: &str,
    sha256: &str,
    size: u64,
) -> Result<RecordBatch> {
    let url = store.url_of(rel);
    store
        .read_verified(rel, sha256, size, move |bytes| {
            std::panic::catch_unwind(|| decode_parquet(bytes, &url)).unwrap_or_else(|_| {
                Err(Error::Data(format!(
                    "{url} is not a readable Parquet file (the Parquet reader failed on it); re-run the stage that wrote it with --force"
                )))
            })
        })
        .await
}

/// Decodes a whole Parquet file held in memory into one batch.
fn decode_parquet(bytes: bytes::Bytes, url: &str) -> Result<RecordBatch> {
    let corrupt = |e: parquet::errors::ParquetError| {
        Error::Data(format!(
            "{url} is not a readable Parquet file ({e}); re-run the stage that wrote it with --force"
        ))
    };
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(corrupt)?;
    let schema = builder.schema().clone();
    let batches = builder
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(corrupt)?
        .collect::<std::result::Result<Vec<RecordBatch>, _>>()
        .map_err(|e| {
            Error::Data(format!(
                "{url} does not decode ({e}); re-run the stage that wrote it with --force"
            ))
        })?;
    arrow::compute::concat_batches(&schema, &batches)
        .map_err(|e| Error::Data(format!("{url}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ColumnType;

    /// Files appended one by one give the columns one concatenation of all their pieces gives,
    /// nulls and sliced pieces included, whether the first file's estimate leaves room to spare
    /// or far too little (the builders then grow).
    #[test]
    fn files_assembled_one_by_one_equal_one_concatenation() {
        use arrow::array::{
            Array, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array,
            TimestampMicrosecondArray,
        };
        let decl = |name: &str, ty: &str| Column {
            name: name.into(),
            ty: ColumnType::parse(ty).unwrap(),
            nullable: true,
            min: None,
            max: None,
            values: None,
        };
        let columns = vec![
            decl("id", "string"),
            decl("flag", "bool"),
            decl("n", "int32"),
            decl("big", "int64"),
            decl("x", "float64"),
            decl("day", "date"),
            decl("at", "timestamp"),
        ];
        // A file of `n` rows starting at row `from`, each column as two pieces, the second a
        // slice of a larger array; every seventh value null.
        let file = |from: usize, n: usize| -> Vec<Vec<ArrayRef>> {
            let v = |i: usize| (i % 7 != 3).then_some(i);
            let col = |f: &dyn Fn(std::ops::Range<usize>) -> ArrayRef| {
                let cut = n / 3;
                let whole = f(from + cut - 2..from + n + 5);
                vec![f(from..from + cut), whole.slice(2, n - cut)]
            };
            vec![
                col(&|r| {
                    Arc::new(
                        r.map(|i| v(i).map(|i| format!("c{i}")))
                            .collect::<StringArray>(),
                    )
                }),
                col(&|r| {
                    Arc::new(
                        r.map(|i| v(i).map(|i| i % 2 == 0))
                            .collect::<BooleanArray>(),
                    )
                }),
                col(&|r| Arc::new(r.map(|i| v(i).map(|i| i as i32)).collect::<Int32Array>())),
                col(&|r| {
                    Arc::new(
                        r.map(|i| v(i).map(|i| i as i64 * 3))
                            .collect::<Int64Array>(),
                    )
                }),
                col(&|r| {
                    Arc::new(
                        r.map(|i| v(i).map(|i| i as f64 / 8.0))
                            .collect::<Float64Array>(),
                    )
                }),
                col(&|r| Arc::new(r.map(|i| v(i).map(|i| i as i32)).collect::<Date32Array>())),
                col(&|r| {
                    Arc::new(
                        r.map(|i| v(i).map(|i| i as i64 * 1000))
                            .collect::<TimestampMicrosecondArray>()
                            .with_timezone("UTC"),
                    )
                }),
            ]
        };
        let files = [
            file(0, 1000),
            file(1000, 3000),
            file(4000, 10),
            file(4010, 500),
        ];
        for scale in [6.0, 0.01] {
            let mut a = Assembly::new(&columns, &files[0], 1000, scale);
            for f in &files {
                a.append(f.clone()).unwrap();
            }
            let got = a.finish();
            for (c, got) in got.iter().enumerate() {
                let pieces: Vec<&dyn Array> = files
                    .iter()
                    .flat_map(|f| f[c].iter().map(|p| p.as_ref()))
                    .collect();
                let want = arrow::compute::concat(&pieces).unwrap();
                assert_eq!(got.len(), 4510);
                assert_eq!(got.data_type(), &canonical_type(columns[c].ty));
                assert_eq!(got.to_data(), want.to_data(), "column {}", columns[c].name);
                assert_eq!(got.null_count(), want.null_count());
            }
        }
        // A piece of another type is an error, not a panic.
        let mut a = Assembly::new(&columns, &files[0], 1000, 1.0);
        let mut wrong = files[0].clone();
        wrong.swap(2, 3);
        assert!(a.append(wrong).unwrap_err().contains("internal"));
        let mut naive = files[0].clone();
        naive[6] = vec![Arc::new(TimestampMicrosecondArray::from(vec![1i64])) as ArrayRef];
        let mut a = Assembly::new(&columns, &files[0], 1000, 1.0);
        assert!(a.append(naive).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.parquet", "a.parquet"));
        assert!(!glob_match("*.parquet", "x/a.parquet"));
        assert!(glob_match("**/*.parquet", "x/y/a.parquet"));
        assert!(glob_match("**/*.parquet", "a.parquet"));
        assert!(glob_match("part-?.parquet", "part-1.parquet"));
        assert!(!glob_match("part-?.parquet", "part-10.parquet"));
    }

    #[test]
    fn hive_partitions_come_from_folders_only() {
        let p = partitions("region=north/year=2026/part-0.parquet");
        assert_eq!(p["region"], "north");
        assert_eq!(p["year"], "2026");
        assert!(partitions("a=b.parquet").is_empty());
    }

    #[test]
    fn urls_split_into_store_and_path() {
        assert_eq!(split_url("s3://bkt/a/b"), ("s3://bkt".into(), "a/b".into()));
        assert_eq!(
            split_url("file:///tmp/x"),
            ("file://".into(), "/tmp/x".into())
        );
    }
}
