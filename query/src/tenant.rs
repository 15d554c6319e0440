//! One user's view of SQL: a session made for a user's token carries a [`Tenant`], and
//! every table shows only that user's rows, below the query, where the user's SQL cannot
//! remove the filter:
//!
//! * `twins` and `devices` list only the user's entries;
//! * a lake table ([`TenantTable`]) keeps only rows whose `owner` is the user, of the
//!   `(gateway, device)` pairs the user owns (its registered devices and the devices its
//!   twins were seen at). Rows written before the `owner` column (null there) are the
//!   user's by those pairs alone: the registry's (gateway, device) record says whose they
//!   are. A pair that another user has registered too says nothing about whose an old row
//!   is, so such rows are shown to neither (a platform session sees them, owner null).
//!   Requiring the pairs for every row also keeps a payload key `owner` in such an old
//!   file from passing a row off as another user's. The filter sits above the scan, so no
//!   statistics shortcut (`count(*)` from file metadata) can answer for rows the user may
//!   not see.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::DFSchema;
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::prelude::{col, lit};
use twinlake_lake::columns::OWNER;

/// The user a session belongs to (a `SessionConfig` extension); none: a platform session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub user: String,
}

/// The tenant of the session planning a query.
pub fn tenant_of(state: &dyn Session) -> Option<Arc<Tenant>> {
    state.config().get_extension::<Tenant>()
}

/// Who owns which devices.
pub trait Ownership: Send + Sync + std::fmt::Debug {
    /// The `(gateway, device)` pairs of `user`'s devices.
    fn devices_of(&self, user: &str) -> Owned;
}

/// A user's `(gateway, device)` pairs, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    pub pairs: Vec<(String, String)>,
    /// Those of `pairs` that another user has registered as well.
    pub shared: Vec<(String, String)>,
}

impl Owned {
    /// The filter: the user's own rows of its pairs, and rows from before the `owner`
    /// column of the pairs no one else has.
    fn predicate(self, user: &str) -> Expr {
        let mine = col(OWNER).eq(lit(user));
        if self.shared.is_empty() {
            return owned(self.pairs).and(col(OWNER).is_null().or(mine));
        }
        let alone: Vec<_> = self
            .pairs
            .iter()
            .filter(|p| self.shared.binary_search(p).is_err())
            .cloned()
            .collect();
        owned(self.pairs).and(mine).or(owned(alone).and(col(OWNER).is_null()))
    }
}

/// A lake table as a tenant sees it.
#[derive(Debug)]
pub struct TenantTable {
    pub inner: Arc<dyn TableProvider>,
    pub owners: Arc<dyn Ownership>,
}

/// `gateway = g AND device IN (…)`, or'ed over the gateways; `false` for nobody's devices.
fn owned(pairs: Vec<(String, String)>) -> Expr {
    let mut by_gateway: BTreeMap<String, Vec<Expr>> = BTreeMap::new();
    for (g, d) in pairs {
        by_gateway.entry(g).or_default().push(lit(d));
    }
    by_gateway
        .into_iter()
        .map(|(g, devices)| col("gateway").eq(lit(g)).and(col("device").in_list(devices, false)))
        .reduce(Expr::or)
        .unwrap_or(lit(false))
}

#[async_trait::async_trait]
impl TableProvider for TenantTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let Some(tenant) = tenant_of(state) else {
            return self.inner.scan(state, projection, filters, limit).await;
        };
        let schema = self.schema();
        // Read what was asked plus the two columns the filter needs.
        let mut cols: Vec<usize> = projection
            .cloned()
            .unwrap_or_else(|| (0..schema.fields().len()).collect());
        let wanted = cols.len();
        for name in ["gateway", "device", OWNER] {
            let i = schema.index_of(name)?;
            if !cols.contains(&i) {
                cols.push(i);
            }
        }
        // The limit is a hint for the rows before this filter: not passed down.
        let scan = self.inner.scan(state, Some(&cols), filters, None).await?;
        let scanned = scan.schema();
        let predicate = self.owners.devices_of(&tenant.user).predicate(&tenant.user);
        let predicate = state.create_physical_expr(predicate, &DFSchema::try_from(scanned.as_ref().clone())?)?;
        let filtered: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(predicate, scan)?);
        let exprs: Vec<(Arc<dyn datafusion::physical_expr::PhysicalExpr>, String)> = (0..wanted)
            .map(|i| {
                let name = scanned.field(i).name().clone();
                (Arc::new(Column::new(&name, i)) as _, name)
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(exprs, filtered)?))
    }
}
