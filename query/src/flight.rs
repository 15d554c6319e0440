//! Arrow Flight SQL (ADBC, notebooks): statements and prepared statements (the handle is
//! the SQL; ADBC prepares every query first), `GetSqlInfo`, and a handshake.
//!
//! Auth: `authorization: Bearer <token>` on every call (ADBC's
//! `adbc.flight.sql.authorization_header`), or a Basic handshake whose password is the token,
//! answered with the Bearer header to use.

pub mod influx;

use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, CommandGetSqlInfo, CommandPreparedStatementQuery, CommandStatementQuery, DoPutPreparedStatementResult,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use base64::Engine as _;
use futures::{Stream, TryStreamExt};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use crate::Engine;
use crate::pg::{Access, TokenCheck};

static SQL_INFO: LazyLock<Option<SqlInfoData>> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Twinlake");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    b.build().ok()
});

/// The Flight SQL service.
#[derive(Clone)]
pub struct FlightSql {
    engine: Engine,
    check: TokenCheck,
}

impl std::fmt::Debug for FlightSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightSql").finish_non_exhaustive()
    }
}

fn status(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A query error as a gRPC status: refusals are `PermissionDenied`, the deadline
/// `DeadlineExceeded`, too many rows `ResourceExhausted`.
fn query_status(e: crate::QueryError) -> Status {
    use crate::session::{LimitError, limit_error};
    match &e {
        crate::QueryError::Refused(m) => Status::permission_denied(m.clone()),
        crate::QueryError::DataFusion(df) => match limit_error(df) {
            Some(LimitError::Timeout(_)) => Status::deadline_exceeded(e.to_string()),
            Some(LimitError::TooManyRows(_)) => Status::resource_exhausted(e.to_string()),
            None => status(e),
        },
        _ => status(e),
    }
}

fn stream_status(e: datafusion::error::DataFusionError) -> arrow_flight::error::FlightError {
    let status = query_status(crate::QueryError::DataFusion(e));
    arrow_flight::error::FlightError::Tonic(Box::new(status))
}

impl FlightSql {
    pub fn new(engine: Engine, check: TokenCheck) -> Self {
        Self { engine, check }
    }

    /// The token of a call: Bearer, or Basic with the token as password.
    fn token(md: &MetadataMap) -> Option<String> {
        let v = md.get("authorization")?.to_str().ok()?;
        if let Some(t) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")) {
            return Some(t.trim().to_owned());
        }
        let b = v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic "))?;
        let raw = base64::engine::general_purpose::STANDARD.decode(b.trim()).ok()?;
        let s = String::from_utf8(raw).ok()?;
        s.split_once(':').map(|(_, p)| p.to_owned())
    }

    /// The call's token and what it may see.
    pub(crate) fn auth(&self, md: &MetadataMap) -> Result<(String, Access), Status> {
        match Self::token(md) {
            Some(t) => match (self.check)(&t) {
                Some(access) => Ok((t, access)),
                None => Err(Status::unauthenticated(
                    "the token is not valid or lacks the read scope",
                )),
            },
            None => Err(Status::unauthenticated(
                "send `authorization: Bearer <token>` (an API token with the read scope)",
            )),
        }
    }

    /// The schema a statement's data will have on the wire: the encoder sends dictionary
    /// columns (device, gateway) as their values.
    async fn schema_of(&self, access: Access, sql: &str) -> Result<SchemaRef, Status> {
        let session = self.engine.session_for(access.user).map_err(query_status)?;
        let plan = self.engine.plan(&session, sql).await.map_err(query_status)?;
        Ok(hydrated(plan.schema().as_arrow()))
    }

    fn info(schema: &SchemaRef, ticket: Vec<u8>, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
        Ok(FlightInfo::new()
            .try_with_schema(schema)
            .map_err(status)?
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
            .with_descriptor(descriptor)
            .with_ordered(true))
    }

    pub(crate) async fn run(
        &self,
        access: Access,
        sql: &str,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let stream = self
            .engine
            .query_as(access.user, sql, None)
            .await
            .map_err(query_status)?;
        let schema = hydrated(&stream.schema());
        let batches = stream.map_err(stream_status);
        let flight = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(|e| match e {
                arrow_flight::error::FlightError::Tonic(s) => *s,
                other => Status::internal(other.to_string()),
            });
        Ok(Response::new(Box::pin(flight)))
    }
}

fn hydrated(schema: &arrow::datatypes::Schema) -> SchemaRef {
    let fields: Vec<arrow::datatypes::Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            arrow::datatypes::DataType::Dictionary(_, v) => f.as_ref().clone().with_data_type(v.as_ref().clone()),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(arrow::datatypes::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    ))
}

fn handle_sql(handle: &[u8]) -> Result<&str, Status> {
    std::str::from_utf8(handle)
        .map_err(|_| Status::invalid_argument("the statement handle is not a statement of this server"))
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        let (token, _) = self.auth(request.metadata())?;
        let out = futures::stream::iter([Ok(HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into_bytes().into(),
        })]);
        let mut resp: Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>> =
            Response::new(Box::pin(out));
        if let Ok(v) = format!("Bearer {token}").parse() {
            resp.metadata_mut().insert("authorization", v);
        }
        Ok(resp)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (_, access) = self.auth(request.metadata())?;
        let schema = self.schema_of(access, &query.query).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        Ok(Response::new(Self::info(
            &schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )?))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (_, access) = self.auth(request.metadata())?;
        self.run(access, handle_sql(&ticket.statement_handle)?).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let (_, access) = self.auth(request.metadata())?;
        let schema = self.schema_of(access, &query.query).await?;
        let IpcMessage(dataset_schema) = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(status)?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into_bytes().into(),
            dataset_schema,
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        self.auth(request.metadata())?;
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.auth(request.metadata())?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (_, access) = self.auth(request.metadata())?;
        let schema = self
            .schema_of(access, handle_sql(&cmd.prepared_statement_handle)?)
            .await?;
        Ok(Response::new(Self::info(
            &schema,
            cmd.as_any().encode_to_vec(),
            request.into_inner(),
        )?))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (_, access) = self.auth(request.metadata())?;
        self.run(access, handle_sql(&cmd.prepared_statement_handle)?).await
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth(request.metadata())?;
        let schema = Arc::new(SqlInfoDataBuilder::schema().clone());
        Ok(Response::new(Self::info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )?))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.auth(request.metadata())?;
        let info = SQL_INFO.as_ref().ok_or_else(|| Status::internal("sql info"))?;
        let batch = query.into_builder(info).build().map_err(status)?;
        let schema = batch.schema();
        let flight = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::iter([Ok(batch)]))
            .map_err(|e| Status::internal(e.to_string()));
        Ok(Response::new(Box::pin(flight)))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Err(Status::unimplemented(format!("{} is not supported", message.type_url)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// A running Flight SQL listener.
#[derive(Debug)]
pub struct FlightServer {
    pub addr: std::net::SocketAddr,
    /// Ends once the server has stopped.
    pub task: tokio::task::JoinHandle<()>,
}

/// Serves Flight SQL on `listener` until `stop` turns true; TLS with `tls` (cert, key PEM).
pub fn serve(
    engine: Engine,
    listener: TcpListener,
    tls: Option<(Vec<u8>, Vec<u8>)>,
    check: TokenCheck,
    mut stop: watch::Receiver<bool>,
) -> Result<FlightServer, crate::QueryError> {
    let addr = listener.local_addr()?;
    let svc = FlightServiceServer::new(influx::Front {
        sql: FlightSql::new(engine, check),
    });
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        builder = builder
            .tls_config(
                tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .map_err(|e| crate::QueryError::Catalog(format!("Flight SQL TLS: {e}")))?;
    }
    info!(%addr, "Flight SQL listening");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(async move {
        let res = builder
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "Flight SQL server ended");
        }
    });
    Ok(FlightServer { addr, task })
}
