//! InfluxDB 3's query tickets on the Flight endpoint, so `influxdb3-python`
//! (`influxdb_client_3`) and the notebooks written for it run against Twinlake unchanged.
//!
//! Its client sends a plain Flight `DoGet` whose ticket is JSON, `{"database", "sql_query",
//! "query_type": "sql"}`, with `authorization: Bearer <token>`. arrow-flight's Flight SQL
//! server decodes every ticket as a protobuf `Any` first, and a JSON ticket fails there; so
//! [`Front`] stands before it: a ticket that starts with `{` is read here, any other goes to
//! Flight SQL untouched. (An `Any` starts with its field-1 tag, 0x0a, never `{`.)
//!
//! The token decides what the query sees, as on every surface: `database` names nothing
//! here and any value is accepted (InfluxDB's clients require one; `twinlake` reads well).
//! `query_type` must be `sql`; InfluxQL and query parameters are refused with a clear error.

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, PollInfo, SchemaResult, Ticket,
};
use serde::Deserialize;
use tonic::{Request, Response, Status, Streaming};

use super::FlightSql;

/// An InfluxDB 3 query ticket.
#[derive(Debug, Deserialize)]
pub struct InfluxTicket {
    #[serde(default)]
    pub database: Option<String>,
    pub sql_query: String,
    #[serde(default = "sql")]
    pub query_type: String,
    #[serde(default)]
    pub params: Option<serde_json::Value>,
}

fn sql() -> String {
    "sql".into()
}

impl InfluxTicket {
    /// The ticket, if it is JSON (`None`: a Flight SQL ticket); an error for JSON that is
    /// not a query this server runs.
    pub fn parse(ticket: &[u8]) -> Option<Result<Self, Status>> {
        if ticket.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        let t = match serde_json::from_slice::<InfluxTicket>(ticket) {
            Ok(t) => t,
            Err(e) => {
                return Some(Err(Status::invalid_argument(format!(
                    "a JSON ticket is {{\"database\", \"sql_query\", \"query_type\": \"sql\"}}: {e}"
                ))));
            }
        };
        if !t.query_type.eq_ignore_ascii_case("sql") {
            return Some(Err(Status::invalid_argument(format!(
                "query_type {:?}: only SQL is answered here (no InfluxQL)",
                t.query_type
            ))));
        }
        if t.params
            .as_ref()
            .is_some_and(|p| !p.is_null() && p.as_object().is_none_or(|o| !o.is_empty()))
        {
            return Some(Err(Status::invalid_argument(
                "query parameters are not supported; put the values in the SQL",
            )));
        }
        Some(Ok(t))
    }
}

/// The Flight endpoint: InfluxDB 3 tickets, then Flight SQL.
#[derive(Debug)]
pub struct Front {
    pub(super) sql: FlightSql,
}

type Inner = FlightSql;

#[tonic::async_trait]
impl FlightService for Front {
    type HandshakeStream = <Inner as FlightService>::HandshakeStream;
    type ListFlightsStream = <Inner as FlightService>::ListFlightsStream;
    type DoGetStream = <Inner as FlightService>::DoGetStream;
    type DoPutStream = <Inner as FlightService>::DoPutStream;
    type DoExchangeStream = <Inner as FlightService>::DoExchangeStream;
    type DoActionStream = <Inner as FlightService>::DoActionStream;
    type ListActionsStream = <Inner as FlightService>::ListActionsStream;

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let Some(ticket) = InfluxTicket::parse(&request.get_ref().ticket) else {
            return FlightService::do_get(&self.sql, request).await;
        };
        let (_, access) = self.sql.auth(request.metadata())?;
        let ticket = ticket?;
        tracing::debug!(database = ?ticket.database, "InfluxDB 3 ticket");
        self.sql.run(access, &ticket.sql_query).await
    }

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        self.sql.handshake(request).await
    }

    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.sql.list_flights(request).await
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        FlightService::get_flight_info(&self.sql, request).await
    }

    async fn poll_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        FlightService::poll_flight_info(&self.sql, request).await
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        FlightService::get_schema(&self.sql, request).await
    }

    async fn do_put(&self, request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        FlightService::do_put(&self.sql, request).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        FlightService::do_exchange(&self.sql, request).await
    }

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        FlightService::do_action(&self.sql, request).await
    }

    async fn list_actions(&self, request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        FlightService::list_actions(&self.sql, request).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_tickets_are_told_from_flight_sql_ones() {
        let t = InfluxTicket::parse(br#"{"database":"twinlake","sql_query":"SELECT 1","query_type":"sql"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(t.sql_query, "SELECT 1");
        assert!(InfluxTicket::parse(&[0x0a, 0x3c, b't']).is_none(), "a protobuf Any");
        assert!(InfluxTicket::parse(b"").is_none());
        let refused = |b: &[u8]| InfluxTicket::parse(b).unwrap().unwrap_err().code();
        assert_eq!(
            refused(br#"{"sql_query":"SELECT 1","query_type":"influxql"}"#),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            refused(br#"{"sql_query":"SELECT $1","params":{"a":1}}"#),
            tonic::Code::InvalidArgument
        );
        assert_eq!(refused(br#"{"database":"x"}"#), tonic::Code::InvalidArgument);
        assert!(
            InfluxTicket::parse(br#" {"sql_query":"SELECT 1","params":{}}"#)
                .unwrap()
                .is_ok()
        );
    }
}
