//! The SQL engine: DataFusion over the lake, the twins and the registry, with the time
//! functions, gap filling, `information_schema` and the Postgres catalog that psql, Grafana
//! and JDBC clients read. Every connection or request gets a session of its own, read-only
//! and under the limits of [`crate::session`].

use std::sync::Arc;

use arrow::array::RecordBatch;
use std::time::Duration;

use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use twinlake_twin::TwinStore;

use crate::QueryError;
use crate::fields::{FIELDS, FieldsTable, lake_table};
use crate::lake::Lake;
use crate::session::{CappedPool, Guarded, LakeOnly, LimitError, SqlLimits};
use crate::system::{DeviceDirectory, DeviceRow, DevicesTable, StateTable, TwinsTable};
use crate::tenant::{Owned, Ownership, Tenant};

/// The catalog and schema every table is in.
pub use crate::session::{CATALOG, SCHEMA, check_read_only};

/// State tables added by the embedder ([`Engine::add_state_table`]), by name.
type Extra = Arc<std::sync::RwLock<std::collections::BTreeMap<String, Arc<dyn TableProvider>>>>;

/// `public`: the lake's tables (found on each lookup, so new ones appear at once), plus
/// `twins`, `devices`, `fields` (every numeric field in one long table) and the embedder's
/// state tables (the cloud's `alarms`).
#[derive(Debug)]
struct LakeSchema {
    lake: Arc<Lake>,
    owners: Arc<dyn Ownership>,
    twins: Arc<StateTable<TwinsTable>>,
    devices: Arc<StateTable<DevicesTable>>,
    extra: Extra,
}

impl LakeSchema {
    fn extra(&self, name: &str) -> Option<Arc<dyn TableProvider>> {
        self.extra.read().ok()?.get(name).cloned()
    }

    fn extra_names(&self) -> Vec<String> {
        self.extra
            .read()
            .map(|e| e.keys().cloned().collect())
            .unwrap_or_default()
    }
}

const TWINS: &str = "twins";
const DEVICES: &str = "devices";

#[async_trait::async_trait]
impl SchemaProvider for LakeSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.lake.table_names();
        let extra = self.extra_names();
        names.retain(|n| n != TWINS && n != DEVICES && n != FIELDS && !extra.contains(n));
        names.push(TWINS.into());
        names.push(DEVICES.into());
        names.push(FIELDS.into());
        names.extend(extra);
        names.sort();
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(match name {
            TWINS => Some(self.twins.clone()),
            DEVICES => Some(self.devices.clone()),
            FIELDS => Some(Arc::new(FieldsTable {
                lake: self.lake.clone(),
                owners: self.owners.clone(),
            })),
            n if let Some(t) = self.extra(n) => Some(t),
            _ => lake_table(&self.lake, &self.owners, name),
        })
    }

    fn table_exist(&self, name: &str) -> bool {
        name == TWINS
            || name == DEVICES
            || name == FIELDS
            || self.extra(name).is_some()
            || self.lake.schema(name).is_some()
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

/// The engine: a base session that owns the catalogs and functions, and a session per
/// connection or request made from it ([`Engine::session`]).
#[derive(Clone)]
pub struct Engine {
    base: Arc<SessionContext>,
    lake: Arc<Lake>,
    limits: SqlLimits,
    /// All queries' memory together.
    pool: Arc<dyn MemoryPool>,
    /// Query slots.
    slots: Arc<Semaphore>,
    /// Sessions not yet freed.
    live: Arc<std::sync::atomic::AtomicUsize>,
    extra: Extra,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("lake", &self.lake)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `lake`, `twins` and `devices`, with the default limits.
    pub fn new(lake: Arc<Lake>, twins: TwinStore, devices: Arc<dyn DeviceDirectory>) -> Result<Self, QueryError> {
        // information_schema is ours (crate::pg::PgInformationSchema): PostgreSQL type names.
        let mut config = SessionConfig::new()
            .with_information_schema(false)
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_create_default_catalog_and_schema(true);
        let opts = config.options_mut();
        // Row-level filtering inside files (late materialisation) is chosen per scan by the
        // lake table (`lake/table.rs`): measured, it costs full scans more than it saves.
        opts.execution.parquet.pushdown_filters = false;
        opts.execution.parquet.reorder_filters = true;
        opts.execution.time_zone = Some("UTC".into());
        let url = url::Url::parse(lake.url().as_str()).map_err(|e| QueryError::Catalog(e.to_string()))?;
        let registry = Arc::new(LakeOnly::new(url, lake.store().0.clone()));
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(registry)
            .build_arc()?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_query_planner(Arc::new(Planner))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.add_analyzer_rule(Arc::new(crate::gapfill::GapFillRule));
        let owners = Arc::new(Owners {
            twins: twins.clone(),
            devices: devices.clone(),
        });
        let extra = Extra::default();
        let schema = LakeSchema {
            lake: lake.clone(),
            owners,
            twins: Arc::new(StateTable(TwinsTable::new(twins))),
            devices: Arc::new(StateTable(DevicesTable::new(devices))),
            extra: extra.clone(),
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
        let limits = SqlLimits::default();
        Ok(Self {
            base: Arc::new(ctx),
            lake,
            pool: Arc::new(GreedyMemoryPool::new(limits.memory_total)),
            slots: Arc::new(Semaphore::new(limits.max_concurrent)),
            live: Arc::default(),
            limits,
            extra,
        })
    }

    /// Adds a table of current state read whole when a query runs (only the session
    /// user's rows when it has one). It hides a lake table of the same name.
    pub fn add_state_table(&self, name: &str, source: Arc<dyn crate::system::Source>) {
        if let Ok(mut e) = self.extra.write() {
            e.insert(name.to_owned(), Arc::new(StateTable(source)) as Arc<dyn TableProvider>);
        }
    }

    /// The same engine under `limits` (a new memory pool and query slots).
    pub fn with_limits(mut self, limits: SqlLimits) -> Self {
        self.pool = Arc::new(GreedyMemoryPool::new(limits.memory_total));
        self.slots = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
        self.limits = limits;
        self
    }

    /// Sessions made and not yet freed: a closed connection's session must not outlive it
    /// (the Postgres catalog's reference cycle once kept them).
    pub fn live_sessions(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The limits every surface applies.
    pub fn limits(&self) -> &SqlLimits {
        &self.limits
    }

    /// A new platform session (every user's rows) for one connection or request.
    pub fn session(&self) -> Result<SessionContext, QueryError> {
        self.session_for(None)
    }

    /// A new session for one connection or request: the shared catalogs and functions, its
    /// own settings, and its own share of the memory pool. Nothing set in it reaches another.
    /// With a `user`, every table shows only that user's rows ([`crate::tenant`]).
    pub fn session_for(&self, user: Option<String>) -> Result<SessionContext, QueryError> {
        let base = self.base.state();
        let pool = Arc::new(CappedPool::new(
            self.pool.clone(),
            self.limits.memory_per_query,
            self.live.clone(),
        ));
        let runtime = RuntimeEnvBuilder::from_runtime_env(base.runtime_env())
            .with_memory_pool(pool)
            .build_arc()?;
        let mut state = SessionStateBuilder::new_from_existing(base)
            .with_runtime_env(runtime)
            .build();
        if let Some(user) = user {
            state.config_mut().set_extension(Arc::new(Tenant { user }));
        }
        Ok(SessionContext::new_with_state(state))
    }

    /// Waits for a query slot (`sql.max_concurrent`); none once the engine is closed.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// The lake.
    pub fn lake(&self) -> &Arc<Lake> {
        &self.lake
    }

    /// Lets go of the lake and the twins: the Postgres catalog (datafusion-pg-catalog) keeps
    /// the session's catalog list alive in a reference cycle, so without this the catalog's
    /// database would stay open after the engine is dropped. Queries fail after it.
    pub fn close(&self) {
        if let Ok(mut e) = self.extra.write() {
            e.clear();
        }
        if let Some(catalog) = self.base.catalog(CATALOG) {
            for schema in [SCHEMA, "information_schema", "pg_catalog"] {
                let _ = catalog.deregister_schema(schema, true);
            }
        }
    }

    /// Plans `sql` (one read-only statement) in `session`.
    pub async fn plan(&self, session: &SessionContext, sql: &str) -> Result<LogicalPlan, QueryError> {
        crate::shape::check(sql).map_err(QueryError::TooComplex)?;
        let state = session.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect)?;
        let plan = state.statement_to_plan(statement).await?;
        check_read_only(&plan)?;
        Ok(plan)
    }

    /// Plans `sql` in a new session (one request).
    pub async fn sql(&self, sql: &str) -> Result<DataFrame, QueryError> {
        let session = self.session()?;
        let plan = self.plan(&session, sql).await?;
        Ok(session.execute_logical_plan(plan).await?)
    }

    /// Runs a checked `plan` in `session` under the limits: it waits for a query slot, and
    /// ends with a [`LimitError`] at the deadline (the server's `sql.timeout`, or the
    /// client's own if shorter) or past `sql.max_rows`.
    pub async fn execute(
        &self,
        session: &SessionContext,
        plan: LogicalPlan,
        client_timeout: Option<Duration>,
    ) -> Result<Guarded, QueryError> {
        let timeout = self.limits.timeout_for(client_timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        let expired = || QueryError::from(DataFusionError::from(LimitError::Timeout(timeout)));
        let permit = tokio::time::timeout_at(deadline, self.slot())
            .await
            .map_err(|_| expired())?
            .ok_or_else(|| QueryError::Refused("the SQL engine is shutting down".into()))?;
        let run = async {
            let df = session.execute_logical_plan(plan).await?;
            df.execute_stream().await
        };
        let stream = tokio::time::timeout_at(deadline, run).await.map_err(|_| expired())??;
        Ok(Guarded::new(
            stream,
            deadline,
            timeout,
            self.limits.max_rows,
            Arc::new(permit),
        ))
    }

    /// Plans and runs `sql` in a new platform session under the limits.
    pub async fn query(&self, sql: &str, client_timeout: Option<Duration>) -> Result<Guarded, QueryError> {
        self.query_as(None, sql, client_timeout).await
    }

    /// Plans and runs `sql` in a new session of `user` (none: platform) under the limits.
    pub async fn query_as(
        &self,
        user: Option<String>,
        sql: &str,
        client_timeout: Option<Duration>,
    ) -> Result<Guarded, QueryError> {
        let session = self.session_for(user)?;
        let plan = self.plan(&session, sql).await?;
        self.execute(&session, plan, client_timeout).await
    }

    /// Runs `sql` and collects the result.
    pub async fn collect(&self, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
        use futures::TryStreamExt;
        Ok(self.query(sql, None).await?.try_collect().await?)
    }
}

/// Who owns which devices: the registry's devices and where the twins were seen.
#[derive(Debug)]
struct Owners {
    twins: TwinStore,
    devices: Arc<dyn DeviceDirectory>,
}

impl Ownership for Owners {
    fn devices_of(&self, user: &str) -> Owned {
        let local = self.devices.local_gateway();
        let (mine, others): (Vec<_>, Vec<_>) = self.devices.devices().into_iter().partition(|d| d.user == user);
        let pair = |d: DeviceRow| Some((d.gateway.or_else(|| local.clone())?, d.device));
        let mut out: Vec<(String, String)> = mine.into_iter().filter_map(pair).collect();
        match self.twins.list(Some(user)) {
            Ok(twins) => out.extend(
                twins
                    .into_iter()
                    .filter_map(|t| Some((t.connection.gateway?, t.device))),
            ),
            Err(e) => tracing::warn!(error = %e, "cannot read the twins for a tenant's SQL"),
        }
        out.sort();
        out.dedup();
        let mut shared: Vec<_> = others
            .into_iter()
            .filter_map(pair)
            .filter(|p| out.binary_search(p).is_ok())
            .collect();
        shared.sort();
        shared.dedup();
        Owned { pairs: out, shared }
    }
}
