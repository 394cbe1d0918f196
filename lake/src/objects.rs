//! Source objects on object storage (`s3://bucket/prefix/...`): listing and fetching.
//!
//! The stores are the ones Delta tables use (deltalake's object store registry), so a source
//! takes the same storage options and environment (`AWS_*`) as a lake. Bronze reads an
//! object from a local copy, so every reader (JSON, CSV, Parquet, compressed) works on
//! objects exactly as on files, in bounded memory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use datafusion::object_store::ObjectStoreExt;
use deltalake::logstore::{ObjectStoreRef, store_for};
use deltalake::{ObjectMeta, ObjectStoreError};
use futures::TryStreamExt;
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::StorageOptions;

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEntry {
    /// Where to fetch it: `scheme://bucket/key`.
    pub url: String,
    /// Its key below the listed prefix, `/`-separated.
    pub relative: String,
    pub size: u64,
    /// What changes when the object is written again: its ETag. `None` when the listing
    /// did not say (some S3-compatible stores leave it out): see [`fill_versions`].
    pub version: Option<String>,
}

impl ObjectEntry {
    fn new(base: &Url, meta: ObjectMeta, relative: String) -> Self {
        Self {
            url: object_url(base, &meta.location),
            relative,
            size: meta.size,
            version: meta.e_tag,
        }
    }
}

/// Asks the store for the ETag of each object its listing gave none (a HEAD request each,
/// a few at a time); an object without an ETag at all is versioned by its modification time.
pub async fn fill_versions(entries: &mut [ObjectEntry], opts: &StorageOptions) -> Result<()> {
    let missing: Vec<usize> = (0..entries.len())
        .filter(|i| entries[*i].version.is_none())
        .collect();
    for chunk in missing.chunks(16) {
        let mut heads = tokio::task::JoinSet::new();
        for &i in chunk {
            let url = entries[i].url.clone();
            let (store, _, path) = store(&url, opts)?;
            heads.spawn(async move {
                let meta = store
                    .head(&path)
                    .await
                    .with_context(|| format!("cannot read '{url}'"))?;
                let version = meta
                    .e_tag
                    .unwrap_or_else(|| meta.last_modified.to_rfc3339());
                anyhow::Ok((i, version))
            });
        }
        while let Some(head) = heads.join_next().await {
            let (i, version) = head??;
            entries[i].version = Some(version);
        }
    }
    Ok(())
}

/// Whether a location names object storage rather than a local path.
pub fn is_object_url(location: &str) -> bool {
    location.contains("://") && !location.starts_with("file://")
}

/// The store of the bucket holding `url`, and the object path `url` names in it.
fn store(url: &str, opts: &StorageOptions) -> Result<(ObjectStoreRef, Url, deltalake::Path)> {
    let parsed = Url::parse(url).with_context(|| format!("invalid URL '{url}'"))?;
    // A store made for a URL is rooted at its path: make it for the bucket.
    let bucket = Url::parse(&format!(
        "{}://{}/",
        parsed.scheme(),
        parsed.host_str().unwrap_or_default()
    ))?;
    let store = store_for(&bucket, opts.clone())
        .with_context(|| format!("no object store for '{url}' (supported: s3://, az://, gs://)"))?;
    let path = deltalake::Path::from_url_path(parsed.path())
        .with_context(|| format!("invalid object path in '{url}'"))?;
    Ok((store, parsed, path))
}

/// The URL of `location` in the bucket `base` names.
fn object_url(base: &Url, location: &deltalake::Path) -> String {
    format!(
        "{}://{}/{}",
        base.scheme(),
        base.host_str().unwrap_or_default(),
        location
    )
}

/// The entries of a listing under `prefix` of the bucket `base`, sorted by key.
fn entries(
    base: &Url,
    prefix: &deltalake::Path,
    metas: Vec<deltalake::ObjectMeta>,
) -> Vec<ObjectEntry> {
    let mut entries: Vec<ObjectEntry> = metas
        .into_iter()
        .filter_map(|meta| {
            let relative: Vec<String> = meta
                .location
                .prefix_match(prefix)?
                .map(|p| p.as_ref().to_string())
                .collect();
            Some(ObjectEntry::new(base, meta, relative.join("/")))
        })
        .collect();
    entries.sort_by(|a, b| a.relative.cmp(&b.relative));
    entries
}

/// Every object under the prefix `root` (a URL; a trailing `/` is implied), at any depth,
/// sorted by key.
pub async fn list_objects(root: &str, opts: &StorageOptions) -> Result<Vec<ObjectEntry>> {
    let (store, base, prefix) = store(root, opts)?;
    let metas: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .with_context(|| format!("cannot list '{root}'"))?;
    Ok(entries(&base, &prefix, metas))
}

/// The objects directly under the prefix `dir` (as a directory's files: none of its
/// sub-prefixes' objects), sorted by key.
pub async fn list_directory(dir: &str, opts: &StorageOptions) -> Result<Vec<ObjectEntry>> {
    let (store, base, prefix) = store(dir, opts)?;
    let listed = store
        .list_with_delimiter(Some(&prefix))
        .await
        .with_context(|| format!("cannot list '{dir}'"))?;
    Ok(entries(&base, &prefix, listed.objects))
}

/// The object `url` names, or `None` when there is none (it may be a prefix).
pub async fn head_object(url: &str, opts: &StorageOptions) -> Result<Option<ObjectEntry>> {
    let (store, base, path) = store(url, opts)?;
    match store.head(&path).await {
        Ok(meta) => {
            let name = meta.location.filename().unwrap_or_default().to_string();
            Ok(Some(ObjectEntry::new(&base, meta, name)))
        }
        Err(ObjectStoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read '{url}'")),
    }
}

/// A source object copied to a local file, which is deleted when this is dropped.
#[derive(Debug)]
pub struct LocalCopy {
    pub path: PathBuf,
}

impl Drop for LocalCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A new, not yet written, local file in `dir` for a copy of the object `url`, named after
/// the object so readers see its extension.
fn new_copy(url: &str, dir: &Path) -> LocalCopy {
    static COPIES: AtomicU64 = AtomicU64::new(0);
    let name = url.rsplit('/').next().unwrap_or_default();
    let n = COPIES.fetch_add(1, Ordering::Relaxed);
    LocalCopy {
        path: dir.join(format!("object-{}-{n}-{name}", std::process::id())),
    }
}

/// Copies the object at `url` into a new file in `dir`, a chunk at a time.
pub async fn local_copy(url: &str, opts: &StorageOptions, dir: &Path) -> Result<LocalCopy> {
    // Made before the fetch, so a fetch that fails part way deletes what it wrote.
    let copy = new_copy(url, dir);
    let (store, _, path) = store(url, opts)?;
    let got = store
        .get(&path)
        .await
        .with_context(|| format!("cannot read '{url}'"))?;
    let mut file = tokio::fs::File::create(&copy.path)
        .await
        .with_context(|| format!("cannot create '{}'", copy.path.display()))?;
    let mut chunks = got.into_stream();
    while let Some(chunk) = chunks
        .try_next()
        .await
        .with_context(|| format!("cannot read '{url}'"))?
    {
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    Ok(copy)
}

/// Copies the first lines of the line-based (JSON lines, CSV) object at `url`, at most `max`
/// bytes of whole lines, into a new file in `dir`: enough to infer its columns from its first
/// records without fetching all of it. A UTF-16 object (its lines are not cut at a `\n` byte)
/// or one without a line end in its first `max` bytes is copied whole.
pub async fn local_head_copy(
    url: &str,
    opts: &StorageOptions,
    dir: &Path,
    max: u64,
) -> Result<LocalCopy> {
    let (store, _, path) = store(url, opts)?;
    let size = store
        .head(&path)
        .await
        .with_context(|| format!("cannot read '{url}'"))?
        .size;
    if size <= max {
        return local_copy(url, opts, dir).await;
    }
    let start = store
        .get_range(&path, 0..max)
        .await
        .with_context(|| format!("cannot read '{url}'"))?;
    let utf16 = start.starts_with(&[0xFF, 0xFE]) || start.starts_with(&[0xFE, 0xFF]);
    let Some(end) = start.iter().rposition(|b| *b == b'\n').filter(|_| !utf16) else {
        return local_copy(url, opts, dir).await;
    };
    let copy = new_copy(url, dir);
    tokio::fs::write(&copy.path, &start[..=end])
        .await
        .with_context(|| format!("cannot create '{}'", copy.path.display()))?;
    Ok(copy)
}
