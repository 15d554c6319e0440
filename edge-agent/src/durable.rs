//! A local-disk object store that makes what it writes durable before it answers.
//!
//! `object_store`'s `LocalFileSystem` writes a temporary file and renames it into place
//! without an fsync, so a power cut after a "successful" put can leave an empty or missing
//! file. The uploader deletes its outbox copy after the put and compaction deletes the files
//! it replaced, so the lake's copy must be on disk by then: [`Durable`] fsyncs the file and
//! its directory after every put, copy and rename, and after a multipart upload completes.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};

/// A local store (`file://`, rooted at `/`) whose writes are fsynced, file and directory.
#[derive(Debug)]
pub struct Durable {
    inner: Arc<dyn ObjectStore>,
}

impl std::fmt::Display for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Durable({})", self.inner)
    }
}

impl Durable {
    /// Wraps a `LocalFileSystem` rooted at `/` (what `object_store::parse_url` makes for
    /// `file://` URLs, with the path as the prefix).
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }
}

/// The file behind an object path of a store rooted at `/`.
fn local(location: &Path) -> PathBuf {
    PathBuf::from("/").join(location.as_ref())
}

fn io_error(path: &std::path::Path, source: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "Durable",
        source: format!("fsync {}: {source}", path.display()).into(),
    }
}

/// Fsyncs the file at `location`, then its directory (the rename that put it there).
async fn sync(location: &Path) -> Result<()> {
    let path = local(location);
    tokio::task::spawn_blocking(move || {
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error(&path, e))?;
        let dir = path.parent().unwrap_or(std::path::Path::new("/"));
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error(dir, e))
    })
    .await
    .map_err(|e| object_store::Error::Generic {
        store: "Durable",
        source: Box::new(e),
    })?
}

#[async_trait]
impl ObjectStore for Durable {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let r = self.inner.put_opts(location, payload, opts).await?;
        sync(location).await?;
        Ok(r)
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(SyncedUpload {
            inner,
            location: location.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        sync(to).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        sync(to).await
    }
}

/// A multipart upload whose completion is durable.
#[derive(Debug)]
struct SyncedUpload {
    inner: Box<dyn MultipartUpload>,
    location: Path,
}

#[async_trait]
impl MultipartUpload for SyncedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let r = self.inner.complete().await?;
        sync(&self.location).await?;
        Ok(r)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}
