//! The SQL engine: one DataFusion session over the lake, the twins and the registry, with
//! the time functions, gap filling, `information_schema` and the Postgres catalog that psql,
//! Grafana and JDBC clients read.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, Session, TableProvider};
use datafusion::error::Result as DfResult;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use twinlake_twin::TwinStore;

use crate::QueryError;
use crate::lake::{Lake, LakeTable};
use crate::system::{DeviceDirectory, DevicesTable, StateTable, TwinsTable};

/// The catalog and schema every table is in.
pub const CATALOG: &str = "twinlake";
pub const SCHEMA: &str = "public";

/// `public`: the lake's tables (found on each lookup, so new ones appear at once), plus
/// `twins` and `devices`.
#[derive(Debug)]
struct LakeSchema {
    lake: Arc<Lake>,
    twins: Arc<StateTable<TwinsTable>>,
    devices: Arc<StateTable<DevicesTable>>,
    /// Tables created with SQL (`CREATE TABLE … AS`, views): session scratch space.
    scratch: MemorySchemaProvider,
}

const TWINS: &str = "twins";
const DEVICES: &str = "devices";

#[async_trait::async_trait]
impl SchemaProvider for LakeSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.lake.table_names();
        names.retain(|n| n != TWINS && n != DEVICES);
        names.push(TWINS.into());
        names.push(DEVICES.into());
        names.extend(self.scratch.table_names());
        names.sort();
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(match name {
            TWINS => Some(self.twins.clone()),
            DEVICES => Some(self.devices.clone()),
            _ => match LakeTable::new(self.lake.clone(), name) {
                Some(t) => Some(Arc::new(t)),
                None => self.scratch.table(name).await?,
            },
        })
    }

    fn register_table(&self, name: String, table: Arc<dyn TableProvider>) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if self.table_exist(&name) {
            return datafusion::common::plan_err!("table {name} exists");
        }
        self.scratch.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        self.scratch.deregister_table(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        name == TWINS || name == DEVICES || self.lake.schema(name).is_some() || self.scratch.table_exist(name)
    }
}

/// Plans with the gap-fill node.
#[derive(Debug)]
struct Planner;

#[async_trait::async_trait]
impl QueryPlanner for Planner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(crate::gapfill::GapFillPlanner)])
            .create_physical_plan(plan, session)
            .await
    }
}

/// The engine.
#[derive(Clone)]
pub struct Engine {
    ctx: Arc<SessionContext>,
    lake: Arc<Lake>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("lake", &self.lake)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `lake`, `twins` and `devices`.
    pub fn new(lake: Arc<Lake>, twins: TwinStore, devices: Arc<dyn DeviceDirectory>) -> Result<Self, QueryError> {
        // information_schema is ours (crate::pg::PgInformationSchema): PostgreSQL type names.
        let mut config = SessionConfig::new()
            .with_information_schema(false)
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_create_default_catalog_and_schema(true);
        let opts = config.options_mut();
        // Row-level pruning inside files (page index, late materialisation) pays off on
        // sorted, filtered time-series reads.
        opts.execution.parquet.pushdown_filters = true;
        opts.execution.parquet.reorder_filters = true;
        opts.execution.time_zone = Some("UTC".into());
        let url = url::Url::parse(lake.url().as_str()).map_err(|e| QueryError::Catalog(e.to_string()))?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_object_store(&url, lake.store().0.clone())
            .with_query_planner(Arc::new(Planner))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.add_analyzer_rule(Arc::new(crate::gapfill::GapFillRule));
        let schema = LakeSchema {
            lake: lake.clone(),
            twins: Arc::new(StateTable(TwinsTable::new(twins))),
            devices: Arc::new(StateTable(DevicesTable::new(devices))),
            scratch: MemorySchemaProvider::new(),
        };
        let catalog = ctx
            .catalog(CATALOG)
            .ok_or_else(|| QueryError::Catalog("no default catalog".into()))?;
        catalog.register_schema(SCHEMA, Arc::new(schema))?;
        catalog.register_schema(
            "information_schema",
            Arc::new(crate::pg::PgInformationSchema::new(ctx.state().catalog_list())),
        )?;
        crate::functions::register(&ctx);
        crate::pg::setup_catalog(&ctx)?;
        Ok(Self {
            ctx: Arc::new(ctx),
            lake,
        })
    }

    /// The session every surface plans in.
    pub fn context(&self) -> &Arc<SessionContext> {
        &self.ctx
    }

    /// The lake.
    pub fn lake(&self) -> &Arc<Lake> {
        &self.lake
    }

    /// Lets go of the lake and the twins: the Postgres catalog (datafusion-pg-catalog) keeps
    /// the session's catalog list alive in a reference cycle, so without this the catalog's
    /// database would stay open after the engine is dropped. Queries fail after it.
    pub fn close(&self) {
        if let Some(catalog) = self.ctx.catalog(CATALOG) {
            for schema in [SCHEMA, "information_schema", "pg_catalog"] {
                let _ = catalog.deregister_schema(schema, true);
            }
        }
    }

    /// Plans `sql` (one statement).
    pub async fn sql(&self, sql: &str) -> Result<DataFrame, QueryError> {
        Ok(self.ctx.sql(sql).await?)
    }

    /// Runs `sql` and collects the result.
    pub async fn collect(&self, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
        Ok(self.sql(sql).await?.collect().await?)
    }
}
