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

use crate::session::CATALOG;
use crate::{Engine, QueryError};

mod guard;
mod names;

pub use guard::SETTABLE;
use names::QuoteIdent;
pub use names::{PgInformationSchema, pg_type_name, quote_ident};

/// The server version the session reports.
pub const SERVER_VERSION: &str = "16.6";
const SERVER_VERSION_NUM: &str = "160006";

/// Adds `pg_catalog`, the `pg_*` functions and `current_setting` to a session.
pub fn setup_catalog(ctx: &SessionContext) -> Result<(), QueryError> {
    setup_pg_catalog(ctx, CATALOG, EmptyContextProvider).map_err(|e| QueryError::DataFusion(*e))?;
    ctx.register_udf(ScalarUDF::new_from_impl(CurrentSetting::default()));
    ctx.register_udf(ScalarUDF::new_from_impl(QuoteIdent::default()));
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
                            _ = stop.wait_for(|s| *s) => {}
                        }
                    });
                }
                _ = stop.changed() => break,
            }
        }
    });
    Ok(PgServer { addr, task })
}
