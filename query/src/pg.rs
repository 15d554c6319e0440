//! The Postgres wire protocol (psql, Grafana, DBeaver/PgJDBC, psycopg), on
//! `datafusion-postgres` and its pgwire.
//!
//! * Login: any user name, the API token as the password (cleartext, so use TLS; the
//!   listener offers TLS when the cloud has a certificate, as PostgreSQL does). The token is
//!   checked again before every statement.
//! * Each connection has a session of its own, read-only and under the engine's limits
//!   ([`guard`]); `SET` takes only the settings in [`SETTABLE`].
//! * The session reports `server_version` 16.6, `DateStyle` ISO and UTF8, which psql and
//!   PgJDBC check. `current_setting()` answers the settings Grafana and drivers probe.
//! * `pg_catalog` and the `pg_*` functions come from `datafusion-pg-catalog`.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, ArrayRef, StringBuilder};
use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::common::{Result as DfResult, exec_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;
use datafusion_postgres::DfSessionService;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::QueryHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire;
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, LoginInfo, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::{ClientInfo, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::engine::CATALOG;
use crate::{Engine, QueryError};

mod guard;

pub use guard::SETTABLE;

/// The server version the session reports.
pub const SERVER_VERSION: &str = "16.6";
const SERVER_VERSION_NUM: &str = "160006";

/// Adds `pg_catalog`, the `pg_*` functions and `current_setting` to a session.
pub fn setup_catalog(ctx: &SessionContext) -> Result<(), QueryError> {
    setup_pg_catalog(ctx, CATALOG, EmptyContextProvider).map_err(|e| QueryError::DataFusion(*e))?;
    ctx.register_udf(ScalarUDF::new_from_impl(CurrentSetting::default()));
    ctx.register_udf(ScalarUDF::new_from_impl(QuoteIdent {
        signature: Signature::any(1, Volatility::Immutable),
    }));
    Ok(())
}

/// `current_setting(name)`: the settings clients probe.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentSetting {
    signature: Signature,
}

impl Default for CurrentSetting {
    fn default() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Stable),
        }
    }
}

fn setting(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "server_version_num" => SERVER_VERSION_NUM,
        "server_version" => SERVER_VERSION,
        "search_path" => "\"$user\", public",
        "timezone" => "UTC",
        "datestyle" => "ISO, MDY",
        "client_encoding" | "server_encoding" => "UTF8",
        "standard_conforming_strings" | "integer_datetimes" => "on",
        "transaction_isolation" | "default_transaction_isolation" => "read committed",
        "max_identifier_length" => "63",
        "application_name" => "",
        _ => return None,
    })
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        Ok(arg_types
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { DataType::Utf8 } else { DataType::Boolean })
            .collect())
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let Some(first) = args.args.first() else {
            return exec_err!("current_setting(name) takes a setting name");
        };
        let missing_ok = matches!(
            args.args.get(1),
            Some(ColumnarValue::Scalar(datafusion::common::ScalarValue::Boolean(Some(
                true
            ))))
        );
        let names = crate::functions::text_column("current_setting", first, rows)?;
        let mut out = StringBuilder::new();
        for i in 0..rows {
            if names.is_null(i) {
                out.append_null();
                continue;
            }
            match setting(names.value(i)) {
                Some(v) => out.append_value(v),
                None if missing_ok => out.append_null(),
                None => return exec_err!("unrecognized configuration parameter \"{}\"", names.value(i)),
            }
        }
        let arr: ArrayRef = Arc::new(out.finish());
        Ok(ColumnarValue::Array(arr))
    }
}

/// What a valid token may see: one user's rows, or (no user) every user's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub user: Option<String>,
}

/// Checks a password (an API token): none when it may not read.
pub type TokenCheck = Arc<dyn Fn(&str) -> Option<Access> + Send + Sync>;

/// Cleartext-password login where the password is an API token; the token is kept for the
/// connection's guard, which checks it again before every statement.
struct TokenStartup {
    check: TokenCheck,
    params: Arc<DefaultServerParameterProvider>,
    token: Arc<OnceLock<String>>,
    /// The connection's session: it becomes the token's user's at login.
    session: Arc<SessionContext>,
}

#[async_trait]
impl StartupHandler for TokenStartup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                let user = LoginInfo::from_client_info(client)
                    .user()
                    .unwrap_or_default()
                    .to_owned();
                if let Some(access) = (self.check)(&pwd.password) {
                    if let Some(user) = access.user {
                        let tenant = Arc::new(crate::tenant::Tenant { user });
                        self.session.state_ref().write().config_mut().set_extension(tenant);
                    }
                    let _ = self.token.set(pwd.password);
                    finish_authentication(client, self.params.as_ref()).await?;
                    debug!(%user, "postgres login");
                } else {
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".into(),
                        "28P01".into(),
                        format!(
                            "password authentication failed for user \"{user}\": the password must be an API token with the read scope"
                        ),
                    ))));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// One connection's handlers: its own session, guard and login.
struct Handlers {
    session: Arc<guard::Limited>,
    startup: Arc<TokenStartup>,
}

impl Handlers {
    fn new(
        engine: &Engine,
        check: &TokenCheck,
        params: &Arc<DefaultServerParameterProvider>,
    ) -> Result<Self, QueryError> {
        let token = Arc::new(OnceLock::new());
        let ctx = Arc::new(engine.session()?);
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(guard::Guard::new(check.clone(), token.clone())),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
        ];
        Ok(Self {
            session: Arc::new(guard::Limited {
                inner: Arc::new(DfSessionService::new_with_hooks(ctx.clone(), hooks)),
                engine: engine.clone(),
            }),
            startup: Arc::new(TokenStartup {
                check: check.clone(),
                params: params.clone(),
                token,
                session: ctx,
            }),
        })
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// A running Postgres-wire listener.
#[derive(Debug)]
pub struct PgServer {
    pub addr: SocketAddr,
    /// Ends once the listener has stopped.
    pub task: tokio::task::JoinHandle<()>,
}

/// Serves the engine on `listener` until `stop` turns true, a session per connection. With
/// `tls`, clients may upgrade (sslmode=require); without, they must use sslmode=disable.
pub fn serve(
    engine: Engine,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    check: TokenCheck,
    mut stop: watch::Receiver<bool>,
) -> Result<PgServer, QueryError> {
    let addr = listener.local_addr()?;
    let mut params = DefaultServerParameterProvider::default();
    params.server_version = SERVER_VERSION.into();
    let params = Arc::new(params);
    let acceptor = tls;
    info!(%addr, tls = acceptor.is_some(), "postgres wire listening");
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((socket, peer)) = accepted else { continue };
                    let _ = socket.set_nodelay(true);
                    let handlers = match Handlers::new(&engine, &check, &params) {
                        Ok(h) => Arc::new(h),
                        Err(e) => {
                            warn!(%peer, error = %e, "cannot open a SQL session");
                            continue;
                        }
                    };
                    let acceptor = acceptor.clone();
                    let mut stop = stop.clone();
                    // Connections end with the server.
                    tokio::spawn(async move {
                        tokio::select! {
                            r = pgwire::tokio::process_socket(socket, acceptor, handlers) => {
                                if let Err(e) = r {
                                    debug!(%peer, error = %e, "postgres connection ended");
                                }
                            }
                            _ = stop.changed() => {}
                        }
                    });
                }
                _ = stop.changed() => break,
            }
        }
    });
    Ok(PgServer { addr, task })
}

/// PostgreSQL 15's keywords that `quote_ident` quotes: reserved, column-name and
/// type/function-name keywords (kwlist.h; the unreserved ones need no quotes).
const QUOTED_KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

/// PostgreSQL's `quote_ident`: quotes unless the name is lower case letters, digits, `_`
/// and `$` (not first) and not a keyword that needs quoting; doubles inner quotes.
pub fn quote_ident(s: &str) -> String {
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && !QUOTED_KEYWORDS.contains(&s);
    if plain {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// `quote_ident(text)`, PostgreSQL-exact (Grafana's builder lists names through it).
#[derive(Debug, PartialEq, Eq, Hash)]
struct QuoteIdent {
    signature: Signature,
}

impl ScalarUDFImpl for QuoteIdent {
    fn name(&self) -> &str {
        "quote_ident"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        Ok(vec![DataType::Utf8; arg_types.len()])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let Some(first) = args.args.first() else {
            return exec_err!("quote_ident(text) takes one argument");
        };
        let names = crate::functions::text_column("quote_ident", first, rows)?;
        let out: arrow::array::StringArray = names.iter().map(|n| n.map(quote_ident)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// The PostgreSQL name of a column type, as `information_schema.columns.data_type` has it.
pub fn pg_type_name(dt: &DataType) -> String {
    match dt {
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Timestamp(_, None) => "timestamp without time zone".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 | DataType::Decimal128(_, _) | DataType::Decimal256(_, _) => "numeric".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Dictionary(_, v) => pg_type_name(v),
        DataType::Interval(_) => "interval".into(),
        DataType::List(_) | DataType::LargeList(_) => "ARRAY".into(),
        other => other.to_string(),
    }
}

/// `information_schema` as PostgreSQL clients read it: DataFusion's tables, with
/// `columns.data_type` in PostgreSQL's names (`double precision`, not `Float64`).
///
/// It lives inside the catalog list it describes, so it holds that list weakly (a strong
/// reference would be a cycle that keeps the lake, and its database, open forever).
#[derive(Debug)]
pub struct PgInformationSchema {
    catalogs: std::sync::Weak<dyn datafusion::catalog::CatalogProviderList>,
}

impl PgInformationSchema {
    pub fn new(catalogs: &Arc<dyn datafusion::catalog::CatalogProviderList>) -> Self {
        Self {
            catalogs: Arc::downgrade(catalogs),
        }
    }

    fn inner(&self) -> Option<datafusion::catalog::information_schema::InformationSchemaProvider> {
        self.catalogs
            .upgrade()
            .map(datafusion::catalog::information_schema::InformationSchemaProvider::new)
    }
}

#[async_trait]
impl datafusion::catalog::SchemaProvider for PgInformationSchema {
    fn table_names(&self) -> Vec<String> {
        self.inner().map(|i| i.table_names()).unwrap_or_default()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn datafusion::catalog::TableProvider>>> {
        let Some(inner) = self.inner() else {
            return Ok(None);
        };
        let Some(t) = inner.table(name).await? else {
            return Ok(None);
        };
        if name != "columns" {
            return Ok(Some(t));
        }
        Ok(Some(Arc::new(PgColumns(t))))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner().is_some_and(|i| i.table_exist(name))
    }
}

/// `information_schema.columns` with PostgreSQL type names.
#[derive(Debug)]
struct PgColumns(Arc<dyn datafusion::catalog::TableProvider>);

#[async_trait]
impl datafusion::catalog::TableProvider for PgColumns {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::View
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        _filters: &[datafusion::logical_expr::Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let plan = self.0.scan(state, None, &[], None).await?;
        let batches = datafusion::physical_plan::collect(plan, state.task_ctx()).await?;
        let schema = self.0.schema();
        let idx = schema.index_of("data_type")?;
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            let mut cols = b.columns().to_vec();
            if let Some(col) = cols.get_mut(idx)
                && let Some(names) = col.as_any().downcast_ref::<arrow::array::StringArray>()
            {
                let mapped: arrow::array::StringArray = names
                    .iter()
                    .map(|n| {
                        n.map(|n| match parse_arrow_type(n) {
                            Some(dt) => pg_type_name(&dt),
                            None => n.to_owned(),
                        })
                    })
                    .collect();
                *col = Arc::new(mapped);
            }
            out.push(arrow::array::RecordBatch::try_new(schema.clone(), cols)?);
        }
        Ok(datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
            &[out],
            schema,
            projection.cloned(),
        )?)
    }
}

fn parse_arrow_type(s: &str) -> Option<DataType> {
    s.parse::<DataType>().ok()
}
