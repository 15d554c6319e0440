//! The Postgres wire's guard: what a connection may run, and under which limits.
//!
//! * [`Guard`] is the first query hook: it checks the connection's token again before
//!   every statement (a revoked token's open session refuses its next query), lets only
//!   the per-session settings clients send through `SET`, and plans everything else itself
//!   so that only read-only plans go on.
//! * [`Limited`] wraps the session service: a query waits for a slot, and its rows end with
//!   an error at the deadline (the server's `sql.timeout`, or the client's shorter
//!   `statement_timeout`) or past `sql.max_rows`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
use datafusion_postgres::hooks::{HookClient, QueryHook};
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, Parser};
use futures::Sink;
use pgwire::api::Type;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;

use super::TokenCheck;
use crate::Engine;
use crate::session::{Bounded, LimitError, RowCount};

/// Settings a client may `SET` on its own session (what psql, PgJDBC, psycopg, Grafana
/// and DBeaver send); `SET TIME ZONE` too.
pub const SETTABLE: &[&str] = &[
    "application_name",
    "bytea_output",
    "client_encoding",
    "datestyle",
    "extra_float_digits",
    "intervalstyle",
    "search_path",
    "statement_timeout",
    "timezone",
];

/// The metadata key datafusion-postgres keeps a client's `statement_timeout` under (ms).
const STATEMENT_TIMEOUT_MS: &str = "statement_timeout_ms";

fn error(code: &str, msg: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), msg.into())))
}

fn df_error(e: impl std::fmt::Display) -> PgWireError {
    error("42000", e.to_string())
}

fn limit_error(e: &LimitError) -> PgWireError {
    match e {
        // query_canceled, as PostgreSQL answers a statement_timeout.
        LimitError::Timeout(_) => error("57014", e.to_string()),
        // program_limit_exceeded.
        LimitError::TooManyRows(_) => error("54000", e.to_string()),
    }
}

/// What the guard does with a statement.
enum Verdict {
    /// Leave it to the built-in hooks (allowed `SET`, `SHOW`, transactions).
    Pass,
    Refuse(String),
    /// Plan it here, read-only.
    Plan,
}

fn verdict(statement: &Statement) -> Verdict {
    match statement {
        Statement::Set(Set::SetTimeZone { .. }) => Verdict::Pass,
        Statement::Set(Set::SingleAssignment { variable, .. }) => {
            let name = variable.to_string().to_ascii_lowercase();
            if SETTABLE.contains(&name.as_str()) {
                Verdict::Pass
            } else {
                Verdict::Refuse(format!(
                    "SET {name} is not allowed: a session may set {}",
                    SETTABLE.join(", ")
                ))
            }
        }
        Statement::Set(other) => Verdict::Refuse(format!("{other} is not allowed")),
        Statement::ShowVariable { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. } => Verdict::Pass,
        Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => Verdict::Refuse(
            "cursors are not supported: use the extended protocol's fetch size (PgJDBC setFetchSize)".into(),
        ),
        _ => Verdict::Plan,
    }
}

/// `SET TIME ZONE x` in this connection's session (the built-in hook only reports it):
/// through DataFusion's own `SET`, which also updates the functions that read the zone.
async fn set_time_zone(statement: &Statement, ctx: &SessionContext) -> PgWireResult<()> {
    let Statement::Set(Set::SetTimeZone { local: false, value }) = statement else {
        return Ok(());
    };
    let tz = value.to_string();
    let tz = tz.trim_matches('"').trim_matches('\'');
    if tz.is_empty() || !tz.chars().all(|c| c.is_ascii_alphanumeric() || "+-:/_".contains(c)) {
        return Err(error("22023", format!("invalid time zone {tz:?}")));
    }
    let set = ctx
        .sql(&format!("SET datafusion.execution.time_zone = '{tz}'"))
        .await
        .map_err(df_error)?;
    set.collect().await.map_err(df_error)?;
    Ok(())
}

/// The first hook of every connection.
pub struct Guard {
    check: TokenCheck,
    /// The connection's token, from its login.
    pub token: Arc<OnceLock<String>>,
}

impl Guard {
    pub fn new(check: TokenCheck, token: Arc<OnceLock<String>>) -> Self {
        Self { check, token }
    }

    fn authorized(&self) -> PgWireResult<()> {
        match self.token.get() {
            Some(t) if (self.check)(t).is_some() => Ok(()),
            _ => Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                "the connection's token was revoked or lost its read scope".into(),
            )))),
        }
    }

    async fn plan(&self, statement: &Statement, ctx: &SessionContext) -> PgWireResult<LogicalPlan> {
        let state = ctx.state();
        let plan = state
            .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                statement.clone(),
            )))
            .await
            .map_err(df_error)?;
        crate::session::check_read_only(&plan).map_err(|e| error("25006", e.to_string()))?;
        Ok(plan)
    }

    async fn simple(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> PgWireResult<Response> {
        let plan = self.plan(statement, ctx).await?;
        let df = ctx.execute_logical_plan(plan).await.map_err(df_error)?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        Ok(Response::Query(
            encode_dataframe(df, &Format::UnifiedText, Some(options)).await?,
        ))
    }
}

#[async_trait]
impl QueryHook for Guard {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if let Err(e) = self.authorized() {
            return Some(Err(e));
        }
        match verdict(statement) {
            Verdict::Pass => set_time_zone(statement, ctx).await.err().map(Err),
            Verdict::Refuse(msg) => Some(Err(error("42501", msg))),
            Verdict::Plan => Some(self.simple(statement, ctx, client).await),
        }
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        if let Err(e) = self.authorized() {
            return Some(Err(e));
        }
        match verdict(statement) {
            Verdict::Pass => None,
            Verdict::Refuse(msg) => Some(Err(error("42501", msg))),
            Verdict::Plan => Some(self.plan(statement, ctx).await),
        }
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if let Err(e) = self.authorized() {
            return Some(Err(e));
        }
        // Plans were checked when they were parsed; a refused statement never got one.
        match verdict(statement) {
            Verdict::Refuse(msg) => Some(Err(error("42501", msg))),
            Verdict::Pass => set_time_zone(statement, ctx).await.err().map(Err),
            Verdict::Plan => None,
        }
    }
}

/// The session service of one connection, under the engine's limits.
pub struct Limited {
    pub inner: Arc<DfSessionService>,
    pub engine: Engine,
}

impl Limited {
    fn timeout(&self, client: &(impl ClientInfo + ?Sized)) -> Duration {
        let asked = client
            .metadata()
            .get(STATEMENT_TIMEOUT_MS)
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(Duration::from_millis);
        self.engine.limits().timeout_for(asked)
    }

    /// Runs `query` with a slot and a deadline; its rows stay under both.
    async fn limited<F>(&self, timeout: Duration, query: F) -> PgWireResult<Vec<Response>>
    where
        F: Future<Output = PgWireResult<Vec<Response>>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let expired = || limit_error(&LimitError::Timeout(timeout));
        let permit = tokio::time::timeout_at(deadline, self.engine.slot())
            .await
            .map_err(|_| expired())?
            .ok_or_else(|| error("57P01", "the server is shutting down"))?;
        let permit = Arc::new(permit);
        let responses = tokio::time::timeout_at(deadline, query)
            .await
            .map_err(|_| expired())??;
        let max_rows = self.engine.limits().max_rows;
        Ok(responses
            .into_iter()
            .map(|r| match r {
                Response::Query(mut q) => {
                    let rows = std::mem::replace(&mut q.data_rows, Box::pin(futures::stream::empty()));
                    q.data_rows = Box::pin(Bounded::new(rows, deadline, timeout, max_rows, permit.clone()));
                    Response::Query(q)
                }
                other => other,
            })
            .collect())
    }
}

#[async_trait]
impl SimpleQueryHandler for Limited {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        crate::shape::check(query).map_err(|e| error("54001", e))?;
        let timeout = self.timeout(client);
        self.limited(
            timeout,
            SimpleQueryHandler::do_query(self.inner.as_ref(), client, query),
        )
        .await
    }
}

#[async_trait]
impl ExtendedQueryHandler for Limited {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = Checked;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::new(Checked(self.inner.query_parser()))
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let timeout = self.timeout(client);
        let run = async {
            ExtendedQueryHandler::do_query(self.inner.as_ref(), client, portal, max_rows)
                .await
                .map(|r| vec![r])
        };
        let mut out = self.limited(timeout, run).await?;
        Ok(out.pop().unwrap_or(Response::EmptyQuery))
    }
}

/// The session's parser behind the shape check (extended protocol: Parse messages).
pub struct Checked(Arc<Parser>);

#[async_trait]
impl QueryParser for Checked {
    type Statement = <Parser as QueryParser>::Statement;

    async fn parse_sql<C>(&self, client: &C, sql: &str, types: &[Option<Type>]) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        crate::shape::check(sql).map_err(|e| error("54001", e))?;
        self.0.parse_sql(client, sql, types).await
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.0.get_parameter_types(stmt)
    }

    fn get_result_schema(&self, stmt: &Self::Statement, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        self.0.get_result_schema(stmt, format)
    }
}

impl RowCount for DataRow {
    fn row_count(&self) -> u64 {
        1
    }
}

impl From<LimitError> for PgWireError {
    fn from(e: LimitError) -> Self {
        limit_error(&e)
    }
}
