//! Whose rows a file holds. Gateways write their own Parquet files, so before a file is
//! catalogued its `(gateway, device)` pairs are read and checked by the caller (the cloud
//! knows which devices each gateway may speak for); a file that fails is moved under
//! `_quarantine/`, where no listing catalogues it, and counted.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;

use twinlake_lake::columns::OWNER;

use crate::QueryError;
use crate::catalog::{self, FileMeta};
use crate::lake::Lake;

/// Where files that failed their check go, under the lake's root.
pub const QUARANTINE: &str = "_quarantine";

/// Whose a row is: the gateway that wrote it, the device, and the user (none in a file of
/// format 1, written before the `owner` column).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowOrigin {
    pub gateway: String,
    pub device: String,
    pub owner: Option<String>,
}

/// The distinct origins of a lake file's rows.
pub async fn origins(
    store: &Arc<dyn ObjectStore>,
    prefix: &ObjectPath,
    path: &str,
    size: u64,
) -> Result<BTreeSet<RowOrigin>, QueryError> {
    let builder = catalog::open_file(store, prefix, path, size).await?;
    let schema = builder.parquet_schema();
    let wanted: Vec<usize> = (0..schema.num_columns())
        .filter(|&i| matches!(schema.column(i).name(), "gateway" | "device" | OWNER))
        .collect();
    let mask = ProjectionMask::leaves(schema, wanted);
    let mut stream = builder.with_projection(mask).build()?;
    let mut out = BTreeSet::new();
    while let Some(batch) = stream.try_next().await? {
        let (Some(g), Some(d)) = (batch.column_by_name("gateway"), batch.column_by_name("device")) else {
            return Err(QueryError::Catalog(format!("{path}: no gateway and device columns")));
        };
        let (g, d) = (text(g)?, text(d)?);
        let o = batch.column_by_name(OWNER).map(text).transpose()?;
        for i in 0..batch.num_rows() {
            if let (Some(Some(g)), Some(Some(d))) = (g.get(i), d.get(i)) {
                let owner = o.as_ref().and_then(|o| o.get(i).cloned().flatten());
                out.insert(RowOrigin {
                    gateway: g.clone(),
                    device: d.clone(),
                    owner,
                });
            }
        }
    }
    Ok(out)
}

/// A column's values as text, row by row (dictionary or plain strings).
fn text(col: &Arc<dyn Array>) -> Result<Vec<Option<String>>, QueryError> {
    let col = arrow::compute::cast(col, &DataType::Utf8)?;
    let s = col.as_string::<i32>();
    Ok((0..s.len())
        .map(|i| (!s.is_null(i)).then(|| s.value(i).to_owned()))
        .collect())
}

/// Moves a lake file under [`QUARANTINE`], keeping its path there.
pub async fn quarantine(store: &Arc<dyn ObjectStore>, prefix: &ObjectPath, path: &str) -> Result<(), QueryError> {
    let from = catalog::full_path(prefix, path);
    let to = catalog::full_path(prefix, &format!("{QUARANTINE}/{path}"));
    store.rename(&from, &to).await?;
    Ok(())
}

/// What a check says of a file's pairs: `Err(reason)` to quarantine it.
pub type Check<'a> = &'a (dyn Fn(&FileMeta, &BTreeSet<RowOrigin>) -> Result<(), String> + Sync);

impl Lake {
    /// Catalogues an announced file if `check` accepts its rows' origins; otherwise moves
    /// it to quarantine. `Ok(Err(reason))` says it was quarantined.
    pub async fn commit_checked(
        &self,
        path: &str,
        size: Option<u64>,
        check: Check<'_>,
    ) -> Result<Result<bool, String>, QueryError> {
        // A path compaction replaced is a re-upload: `commit` deletes it.
        if self.catalog().replaced(path)? {
            return self.commit(path, size).await.map(Ok);
        }
        let (store, prefix) = self.store();
        let meta = catalog::describe(store, prefix, path, size).await?;
        let pairs = origins(store, prefix, path, meta.bytes).await?;
        if let Err(reason) = check(&meta, &pairs) {
            quarantine(store, prefix, path).await?;
            return Ok(Err(reason));
        }
        self.commit_described(meta).map(Ok)
    }

    /// [`Lake::rebuild`] with the same check for every file it finds; returns the files
    /// catalogued and how many were quarantined.
    pub async fn rebuild_checked(&self, check: Check<'_>) -> Result<(Vec<FileMeta>, usize), QueryError> {
        let (store, prefix) = self.store();
        let new = self.unknown_files().await?;
        let mut keep = Vec::new();
        let mut refused = 0;
        for m in new {
            let pairs = origins(store, prefix, &m.path, m.bytes).await?;
            match check(&m, &pairs) {
                Ok(()) => keep.push(m),
                Err(reason) => {
                    tracing::warn!(path = %m.path, %reason, "a file found by listing is quarantined");
                    quarantine(store, prefix, &m.path).await?;
                    refused += 1;
                }
            }
        }
        self.add_files(keep.clone())?;
        Ok((keep, refused))
    }
}
