//! The one storage abstraction: a [`Store`] is an `object_store` plus a prefix, made from a URL.
//!
//! `file://` (and plain paths), `memory://NAME` and, where the build enables it, `s3://` all go
//! through `object_store::parse_url_opts`, so nothing outside this module knows which backend a
//! URL names. Writes are whole-object puts, which every backend makes atomic: an object is either
//! absent or complete, never half-written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

use crate::error::{Error, Result};

mod local;
pub mod s3;

/// An object store rooted at a prefix, addressed by relative paths such as `run-1/load/load.json`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

/// What a conditional put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conditional {
    /// Written; the object's new e-tag.
    Written(Option<String>),
    /// Someone else changed (or created) the object first: nothing was written.
    Conflict,
}

/// One object found under a store: its path relative to the store, and its metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectInfo {
    pub path: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
    pub last_modified: String,
}

/// An output that is not what its stage recorded.
fn integrity(url: &str, rel: &str, what: String) -> Error {
    Error::Integrity {
        message: format!(
            "{url} is not the file its stage wrote: {what}; it was changed or replaced after it was recorded"
        ),
        path: rel.to_string(),
    }
}

/// What kind of storage failure an error is, from its type: `object_store`'s variant (which
/// carries the HTTP status of a request: 403 is `PermissionDenied`, 404 `NotFound`, ...), else
/// the transport failure (`HttpError`) found in its chain of sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The credentials were refused (401, 403).
    Refused,
    /// The object or location does not exist (404).
    Missing,
    /// The endpoint did not answer, or not in time (connect errors, timeouts), after retries.
    Unreachable,
    /// A local folder has a symbolic link that loops back to a folder above it.
    Loop,
    /// Anything else.
    Other,
}

impl Failure {
    /// Classifies an `object_store` error.
    pub fn of(e: &object_store::Error) -> Failure {
        use object_store::client::HttpErrorKind;
        match e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => return Failure::Refused,
            object_store::Error::NotFound { .. } => return Failure::Missing,
            _ => {}
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cause {
            if let Some(w) = c.downcast_ref::<walkdir::Error>() {
                if w.loop_ancestor().is_some() {
                    return Failure::Loop;
                }
            }
            if let Some(h) = c.downcast_ref::<object_store::client::HttpError>() {
                return match h.kind() {
                    HttpErrorKind::Connect
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted => Failure::Unreachable,
                    _ => Failure::Other,
                };
            }
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    std::io::ErrorKind::PermissionDenied => Failure::Refused,
                    std::io::ErrorKind::NotFound => Failure::Missing,
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::ConnectionRefused => {
                        Failure::Unreachable
                    }
                    _ => Failure::Other,
                };
            }
            cause = c.source();
        }
        Failure::Other
    }

    /// What to check, for a person.
    fn hint(self) -> &'static str {
        match self {
            Failure::Refused => {
                "; access was refused: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the task role) and the bucket policy"
            }
            Failure::Missing => "; it does not exist: check the URL and the bucket",
            Failure::Unreachable => {
                "; the storage endpoint did not answer: check AWS_ENDPOINT_URL and that the server is up \
                 (retries: MLPIPE_STORAGE_RETRIES, MLPIPE_STORAGE_RETRY_TIMEOUT)"
            }
            Failure::Loop => {
                "; a symbolic link in it loops back to a folder above it: remove the link, or point the location at a folder without it"
            }
            Failure::Other => "",
        }
    }
}

/// A storage error as a person reads it: what failed, where, and what to check; `e` is kept as
/// its source.
pub fn fail(action: &str, url: &str, e: object_store::Error) -> Error {
    fail_as(Failure::of(&e), action, url, e)
}

fn fail_as(kind: Failure, action: &str, url: &str, e: object_store::Error) -> Error {
    if kind == Failure::Loop {
        // Nothing to retry or to fix in the storage: the folder's contents are unusable.
        return Error::Data(format!("cannot {action} {url}: {e}{}", kind.hint()));
    }
    Error::Storage {
        message: format!("cannot {action} {url}: {e}{}", kind.hint()),
        source: Some(Box::new(e)),
    }
}

fn memory_stores() -> &'static Mutex<HashMap<String, Arc<InMemory>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

/// Turns a user-supplied location into a URL: URLs pass through; plain paths become `file://`
/// URLs, relative ones resolved against the current directory.
pub fn normalize_url(location: &str) -> Result<String> {
    if location.contains("://") {
        return Ok(location.to_string());
    }
    let p = std::path::Path::new(location);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::storage(format!("cannot read the current directory: {e}")))?
            .join(p)
    };
    let url = Url::from_directory_path(&abs)
        .map_err(|_| Error::Usage(format!("`{location}` is not a usable path")))?;
    Ok(url.to_string())
}

/// Joins a relative path onto a URL, keeping exactly one `/` between them.
pub fn join_url(base: &str, rel: &str) -> String {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        return base.to_string();
    }
    format!("{}/{}", base.trim_end_matches('/'), rel)
}

impl Store {
    /// Opens the store a URL names. `file://` folders need not exist yet.
    pub fn open(location: &str) -> Result<Store> {
        let url_s = normalize_url(location)?;
        let url = Url::parse(&url_s)
            .map_err(|e| Error::Usage(format!("`{location}` is not a valid storage URL: {e}")))?;
        let (inner, prefix): (Arc<dyn ObjectStore>, Path) = match url.scheme() {
            "memory" => {
                let name = url.host_str().unwrap_or("default").to_string();
                let store = memory_stores()
                    .lock()
                    .expect("memory store registry poisoned")
                    .entry(name)
                    .or_insert_with(|| Arc::new(InMemory::new()))
                    .clone();
                let prefix = Path::parse(url.path().trim_matches('/'))
                    .map_err(|e| Error::Usage(format!("`{location}` has an invalid path: {e}")))?;
                (store, prefix)
            }
            "file" => {
                let (store, path) = object_store::parse_url(&url)
                    .map_err(|e| Error::Usage(format!("`{location}` cannot be opened: {e}")))?;
                (Arc::from(store), path)
            }
            "s3" | "s3a" => {
                let prefix = Path::parse(url.path().trim_matches('/'))
                    .map_err(|e| Error::Usage(format!("`{location}` has an invalid path: {e}")))?;
                (Arc::new(s3::open(&url)?), prefix)
            }
            other => {
                return Err(Error::Usage(format!(
                    "`{location}`: storage scheme `{other}` is not supported; use s3://, file://, memory:// or a path"
                )))
            }
        };
        Ok(Store {
            inner,
            prefix,
            url: url_s.trim_end_matches('/').to_string(),
        })
    }

    /// The URL this store is rooted at, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of a relative path inside this store.
    pub fn url_of(&self, rel: &str) -> String {
        join_url(&self.url, rel)
    }

    /// A store rooted at a sub-folder of this one.
    pub fn child(&self, rel: &str) -> Store {
        Store {
            inner: self.inner.clone(),
            prefix: self.path(rel),
            url: self.url_of(rel).trim_end_matches('/').to_string(),
        }
    }

    /// The underlying object store and the absolute path of `rel`, for readers that take both.
    pub fn object(&self, rel: &str) -> (Arc<dyn ObjectStore>, Path) {
        (self.inner.clone(), self.path(rel))
    }

    fn path(&self, rel: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    fn rel_of(&self, path: &Path) -> String {
        let full = path.as_ref();
        let pre = self.prefix.as_ref();
        if pre.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(pre)
                .map(|s| s.trim_start_matches('/').to_string())
                .unwrap_or_else(|| full.to_string())
        }
    }

    /// Reads a whole object.
    pub async fn get(&self, rel: &str) -> Result<Bytes> {
        let path = self.path(rel);
        let res = self.inner.get(&path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                Error::Data(format!("{} does not exist", self.url_of(rel)))
            }
            e => fail("read", &self.url_of(rel), e),
        })?;
        res.bytes()
            .await
            .map_err(|e| fail("read", &self.url_of(rel), e))
    }

    /// Reads a whole object that must be `size` bytes with SHA-256 `sha256` (as a stage recorded
    /// it). A different size or digest is an [`Error::Integrity`] naming the object; a missing
    /// one a data error.
    pub async fn get_verified(&self, rel: &str, sha256: &str, size: u64) -> Result<Bytes> {
        self.read_verified(rel, sha256, size, Ok).await
    }

    /// [`Store::get_verified`], then `decode` of the bytes, on a blocking thread. Each byte is
    /// hashed once: a local file, read in one call, is hashed while `decode` runs on another
    /// thread; an object from the network is hashed piece by piece as it arrives.
    pub async fn read_verified<T: Send + 'static>(
        &self,
        rel: &str,
        sha256: &str,
        size: u64,
        decode: impl FnOnce(Bytes) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        use sha2::{Digest, Sha256};
        let url = self.url_of(rel);
        let res = self.inner.get(&self.path(rel)).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => Error::Data(format!(
                "{url} does not exist, though its stage recorded it; re-run that stage with --force"
            )),
            e => fail("read", &url, e),
        })?;
        if res.meta.size != size {
            let what = format!("{} bytes, recorded {size}", res.meta.size);
            return Err(integrity(&url, rel, what));
        }
        let blocking = |f: Box<dyn FnOnce() -> (String, Result<T>) + Send>| async move {
            tokio::task::spawn_blocking(f)
                .await
                .map_err(|e| Error::Infra(format!("reading {url}: a task failed: {e}")))
        };
        let (got, decoded) = match res.payload {
            object_store::GetResultPayload::File(..) => {
                // Streaming a local file hops to a blocking thread every 8 KiB.
                let bytes = res
                    .bytes()
                    .await
                    .map_err(|e| fail("read", &self.url_of(rel), e))?;
                blocking(Box::new(move || {
                    let b = bytes.clone();
                    rayon::join(|| hex::encode(Sha256::digest(&b)), || decode(bytes))
                }))
                .await?
            }
            object_store::GetResultPayload::Stream(mut stream) => {
                let mut buf = bytes::BytesMut::with_capacity(size as usize);
                let mut h = Sha256::new();
                while let Some(chunk) = stream
                    .try_next()
                    .await
                    .map_err(|e| fail("read", &self.url_of(rel), e))?
                {
                    h.update(&chunk);
                    buf.extend_from_slice(&chunk);
                }
                let (got, bytes) = (hex::encode(h.finalize()), buf.freeze());
                blocking(Box::new(move || (got, decode(bytes)))).await?
            }
        };
        if got != sha256 {
            let what = format!(
                "SHA-256 {}…, recorded {}…",
                &got[..12],
                &sha256[..12.min(sha256.len())]
            );
            return Err(integrity(&self.url_of(rel), rel, what));
        }
        decoded
    }

    /// Reads an object, or `None` when it does not exist.
    pub async fn get_opt(&self, rel: &str) -> Result<Option<Bytes>> {
        Ok(self.get_versioned(rel).await?.map(|(b, _)| b))
    }

    /// Writes a whole object atomically: readers see the old object or the new one, never a part.
    pub async fn put(&self, rel: &str, bytes: impl Into<PutPayload>) -> Result<()> {
        self.inner
            .put(&self.path(rel), bytes.into())
            .await
            .map_err(|e| fail("write", &self.url_of(rel), e))?;
        Ok(())
    }

    /// Creates an object only if none exists at `rel` (a create-only, conditional put): `true`
    /// when this call created it, `false` when it was already there.
    pub async fn put_if_absent(&self, rel: &str, bytes: Bytes) -> Result<bool> {
        let opts = object_store::PutOptions::from(object_store::PutMode::Create);
        match self
            .inner
            .put_opts(&self.path(rel), PutPayload::from_bytes(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(fail("write", &self.url_of(rel), e)),
        }
    }

    /// Reads an object with its e-tag (for [`Store::put_conditional`]), or `None` when absent.
    pub async fn get_versioned(&self, rel: &str) -> Result<Option<(Bytes, Option<String>)>> {
        match self.inner.get(&self.path(rel)).await {
            Ok(r) => {
                let tag = r.meta.e_tag.clone();
                let b = r
                    .bytes()
                    .await
                    .map_err(|e| fail("read", &self.url_of(rel), e))?;
                Ok(Some((b, tag)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(fail("read", &self.url_of(rel), e)),
        }
    }

    /// Writes `rel` only if it is unchanged since it was read with e-tag `expected` (`None`: only
    /// if it does not exist): S3's `If-Match` / `If-None-Match`. A local folder has no
    /// conditional update in `object_store`; there the comparison and the write are made under
    /// an advisory lock (`flock`) on a lock file beside the object, which every process writing
    /// it takes.
    pub async fn put_conditional(
        &self,
        rel: &str,
        bytes: Bytes,
        expected: Option<&str>,
    ) -> Result<Conditional> {
        if let Some(file) = self.local_file(rel) {
            let _lock = local::lock(&file).await?;
            let current = self.head(rel).await?;
            let matches = match (expected, &current) {
                (None, None) => true,
                (Some(tag), Some(h)) => h.e_tag.as_deref() == Some(tag),
                _ => false,
            };
            if !matches {
                return Ok(Conditional::Conflict);
            }
            let r = self
                .inner
                .put(&self.path(rel), PutPayload::from_bytes(bytes))
                .await
                .map_err(|e| fail("write", &self.url_of(rel), e))?;
            return Ok(Conditional::Written(r.e_tag));
        }
        self.put_conditional_remote(rel, bytes, expected).await
    }

    /// The local file behind `rel`, when this store is a local folder.
    fn local_file(&self, rel: &str) -> Option<std::path::PathBuf> {
        if !self.url.starts_with("file://") {
            return None;
        }
        Url::parse(&self.url_of(rel)).ok()?.to_file_path().ok()
    }

    async fn put_conditional_remote(
        &self,
        rel: &str,
        bytes: Bytes,
        expected: Option<&str>,
    ) -> Result<Conditional> {
        let mode = match expected {
            None => object_store::PutMode::Create,
            Some(tag) => object_store::PutMode::Update(object_store::UpdateVersion {
                e_tag: Some(tag.to_string()),
                version: None,
            }),
        };
        let path = self.path(rel);
        let payload = PutPayload::from_bytes(bytes.clone());
        match self.inner.put_opts(&path, payload, mode.into()).await {
            Ok(r) => Ok(Conditional::Written(r.e_tag)),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(Conditional::Conflict),
            Err(object_store::Error::NotImplemented { .. }) => {
                let r = self
                    .inner
                    .put(&path, PutPayload::from_bytes(bytes))
                    .await
                    .map_err(|e| fail("write", &self.url_of(rel), e))?;
                Ok(Conditional::Written(r.e_tag))
            }
            Err(e) => Err(fail("write", &self.url_of(rel), e)),
        }
    }

    /// Writes a value as pretty JSON.
    pub async fn put_json<T: serde::Serialize>(&self, rel: &str, value: &T) -> Result<()> {
        let mut v = serde_json::to_vec_pretty(value)?;
        v.push(b'\n');
        self.put(rel, Bytes::from(v)).await
    }

    /// Reads a JSON object, or `None` when it does not exist.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, rel: &str) -> Result<Option<T>> {
        match self.get_opt(rel).await? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                Error::Data(format!(
                    "{} is not valid: {e}; delete it or restore it from a backup",
                    self.url_of(rel)
                ))
            }),
        }
    }

    /// Metadata of one object, or `None` when it does not exist.
    pub async fn head(&self, rel: &str) -> Result<Option<ObjectInfo>> {
        match self.inner.head(&self.path(rel)).await {
            Ok(m) => Ok(Some(self.info(&m))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(fail("read", &self.url_of(rel), e)),
        }
    }

    /// Every object under a relative prefix (recursively), sorted by path.
    pub async fn list(&self, rel_prefix: &str) -> Result<Vec<ObjectInfo>> {
        let prefix = self.path(rel_prefix);
        let listed: std::result::Result<Vec<ObjectMeta>, _> =
            self.inner.list(Some(&prefix)).try_collect().await;
        let metas = match listed {
            Ok(m) => m,
            Err(e) => {
                let url = self.url_of(rel_prefix);
                let kind = match Failure::of(&e) {
                    // S3 reports a list's HTTP status in no type `object_store` exposes (its
                    // list errors are `Generic`): ask for the prefix's metadata, whose failure
                    // it does classify (a refusal is `PermissionDenied` there).
                    Failure::Other => match self.inner.head(&prefix).await {
                        Err(h) if Failure::of(&h) == Failure::Refused => Failure::Refused,
                        _ => Failure::Other,
                    },
                    k => k,
                };
                return Err(fail_as(kind, "list", &url, e));
            }
        };
        let mut out: Vec<ObjectInfo> = metas.iter().map(|m| self.info(m)).collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Deletes an object; deleting one that does not exist is not an error.
    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self.inner.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(fail("delete", &self.url_of(rel), e)),
        }
    }

    fn info(&self, m: &ObjectMeta) -> ObjectInfo {
        ObjectInfo {
            path: self.rel_of(&m.location),
            size: m.size,
            e_tag: m.e_tag.clone(),
            last_modified: m.last_modified.to_rfc3339(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_roundtrip_and_list() {
        let s = Store::open("memory://unit-roundtrip/root").unwrap();
        s.put("a/x.json", Bytes::from_static(b"{}")).await.unwrap();
        s.put("a/b/y.bin", Bytes::from_static(b"12")).await.unwrap();
        let l = s.list("a").await.unwrap();
        let paths: Vec<_> = l.iter().map(|o| o.path.as_str()).collect();
        assert_eq!(paths, ["a/b/y.bin", "a/x.json"]);
        assert_eq!(s.get("a/b/y.bin").await.unwrap().as_ref(), b"12");
        assert!(s.get_opt("missing").await.unwrap().is_none());
        // The same name opens the same store.
        let again = Store::open("memory://unit-roundtrip/root").unwrap();
        assert!(again.head("a/x.json").await.unwrap().is_some());
        assert!(matches!(s.get("nope").await, Err(Error::Data(_))));
    }

    #[tokio::test]
    async fn file_store_relative_paths_and_child() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().to_str().unwrap()).unwrap();
        let c = s.child("runs/r1");
        c.put("m.json", Bytes::from_static(b"1")).await.unwrap();
        assert!(dir.path().join("runs/r1/m.json").exists());
        assert_eq!(s.list("runs").await.unwrap()[0].path, "runs/r1/m.json");
        assert!(c.url().ends_with("/runs/r1"));
    }

    /// Failures are told apart by their type, whatever their message says, and the storage
    /// library's error stays the source of ours.
    #[test]
    fn failures_are_classified_by_type_and_keep_their_source() {
        use object_store::client::{HttpError, HttpErrorKind};
        use std::error::Error as _;
        let io = |kind| Box::new(std::io::Error::new(kind, "403 Forbidden, said the text"));
        let refused = object_store::Error::PermissionDenied {
            path: "p".into(),
            source: io(std::io::ErrorKind::Other),
        };
        assert_eq!(Failure::of(&refused), Failure::Refused);
        let missing = object_store::Error::NotFound {
            path: "p".into(),
            source: io(std::io::ErrorKind::Other),
        };
        assert_eq!(Failure::of(&missing), Failure::Missing);
        // A transport failure deep in a generic error's chain.
        let timeout = object_store::Error::Generic {
            store: "S3",
            source: Box::new(HttpError::new(
                HttpErrorKind::Timeout,
                std::io::Error::other("timed out"),
            )),
        };
        assert_eq!(Failure::of(&timeout), Failure::Unreachable);
        // A message that reads like a refusal is not one.
        let other = object_store::Error::Generic {
            store: "S3",
            source: io(std::io::ErrorKind::InvalidData),
        };
        assert_eq!(Failure::of(&other), Failure::Other);
        let e = fail("read", "s3://b/k", refused);
        assert_eq!(e.exit_code(), 4);
        assert!(e.to_string().contains("access was refused"), "{e}");
        let source = e.source().expect("the cause is kept");
        assert!(source.downcast_ref::<object_store::Error>().is_some());
        let e = fail("read", "s3://b/k", timeout);
        assert!(e.to_string().contains("did not answer"), "{e}");
    }

    #[test]
    fn join_url_keeps_one_slash() {
        assert_eq!(join_url("s3://b/p/", "/x/y"), "s3://b/p/x/y");
        assert_eq!(join_url("file:///a", ""), "file:///a");
    }
}
