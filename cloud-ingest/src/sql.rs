//! SQL in the cloud: the engine over the lake, twins and registry; the cataloguer that turns
//! file commits from gateways into catalog entries; and `POST /v1/sql`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use redb::{ReadableDatabase, ReadableTable};
use tracing::{debug, warn};
use twinlake_query::output::{Encoder, Format};
use twinlake_query::session::SqlLimits;
use twinlake_query::system::{DeviceDirectory, DeviceRow};
use twinlake_query::{Engine, FreshLimits, Lake};
use twinlake_twin::TwinStore;

use crate::Error;
use crate::auth::{Principal, Scope, Tokens};
use crate::config::CloudConfig;
use crate::error::ApiError;
use crate::input::{self, SqlParams};
use crate::state::AppState;
use crate::store::{DEVICES, Db, DeviceRecord, FILES};

/// The registry as the `devices` table sees it; devices without a gateway are at the
/// cloud's own listener (`local`).
#[derive(Debug)]
struct Registry(Db, String);

impl DeviceDirectory for Registry {
    fn local_gateway(&self) -> Option<String> {
        Some(self.1.clone())
    }

    fn devices(&self) -> Vec<DeviceRow> {
        match self.0.scan::<DeviceRecord>(DEVICES, "") {
            Ok(rows) => rows
                .into_iter()
                .map(|(_, d)| DeviceRow {
                    user: d.user,
                    device: d.device,
                    name: d.name,
                    description: d.description,
                    gateway: d.gateway,
                    enabled: d.enabled,
                    tags: d.tags,
                    attributes: d.attributes,
                    created: d.created,
                })
                .collect(),
            Err(e) => {
                warn!(error = %e, "cannot read the registry for SQL");
                Vec::new()
            }
        }
    }
}

/// Opens the lake (`[lake]`) and the engine over it.
pub fn open(cfg: &CloudConfig, db: &Db, twins: &TwinStore) -> Result<Engine, Error> {
    let upload = twinlake_edge::config::UploadSection {
        url: if cfg.lake.url.is_empty() {
            cfg.lake_dir_url()
        } else {
            cfg.lake.url.clone()
        },
        options: cfg.lake.options.clone(),
        ..Default::default()
    };
    let (store, prefix) = twinlake_edge::upload::open_store(&upload, &cfg.data_dir)?;
    let limits = FreshLimits {
        max_rows: cfg.sql.fresh_max_rows,
        max_bytes: cfg.sql.fresh_max_bytes,
        max_age: cfg.sql.fresh_max_age,
    };
    let lake = Lake::open(db.0.clone(), store, prefix, limits).map_err(|e| Error::Storage(e.to_string()))?;
    let engine = Engine::new(
        lake,
        twins.clone(),
        Arc::new(Registry(db.clone(), cfg.edge.gateway.clone())),
    )
    .map_err(|e| Error::Config(format!("SQL engine: {e}")))?;
    engine.add_state_table("alarms", Arc::new(crate::rules::alarms_table(db.clone())));
    Ok(engine.with_limits(SqlLimits {
        max_rows: cfg.sql.max_rows as u64,
        timeout: cfg.sql.timeout,
        memory_per_query: cfg.sql.memory_per_query,
        memory_total: cfg.sql.memory_limit,
        max_concurrent: cfg.sql.max_concurrent,
    }))
}

/// A token check for the Postgres and Flight listeners: any token with the read scope,
/// seeing its user's rows (a platform token: everyone's).
pub fn token_check(tokens: &Tokens) -> twinlake_query::pg::TokenCheck {
    let tokens = tokens.clone();
    Arc::new(move |t: &str| {
        let r = tokens.lookup(t)?;
        (r.scopes.contains(&Scope::Read) || r.scopes.contains(&Scope::Admin))
            .then_some(twinlake_query::pg::Access { user: r.user })
    })
}

/// An announced file that still cannot be read after this many tries over this long is
/// given up (counted).
const GIVE_UP_TRIES: u32 = 30;
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);

/// Catalogues the files gateways announced (the `files` inbox), oldest first, until the
/// cloud stops; a file that cannot be read yet stays and is tried again.
pub async fn catalogue(state: Arc<AppState>) {
    let mut stop = state.stop.subscribe();
    if state.cfg.sql.rebuild_on_start {
        let check = crate::provenance::check(&state, None);
        match state.sql.lake().rebuild_checked(&check).await {
            Ok((found, 0)) if found.is_empty() => {}
            Ok((found, refused)) => {
                state.metrics.files_quarantined.inc_by(refused as u64);
                tracing::info!(
                    files = found.len(),
                    quarantined = refused,
                    "catalogued files found by listing the lake"
                );
                for f in found.iter().filter(|f| f.table == twinlake_edge::rules::ALARMS_TABLE) {
                    if let Some(g) = &f.gateway {
                        crate::rules::gateway::from_file(&state, g, &f.path, Some(f.bytes)).await;
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot list the lake"),
        }
        // Files replaced or expired whose deletion a stop cut short.
        match state.sql.lake().sweep_replaced().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, "deleted replaced files a stop had left"),
            Err(e) => warn!(error = %e, "cannot sweep replaced files"),
        }
    }
    // Paths that failed: when first, and how often (bounded by the inbox).
    let mut failing: std::collections::HashMap<String, (tokio::time::Instant, u32)> = Default::default();
    loop {
        let pending = match inbox(&state.db) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot read the file inbox");
                Vec::new()
            }
        };
        let mut failed = false;
        for (path, size, gateway) in pending {
            let check = crate::provenance::check(&state, gateway.clone());
            match state.sql.lake().commit_checked(&path, size, &check).await {
                Ok(Err(reason)) => {
                    state.metrics.files_quarantined.inc();
                    warn!(%path, %reason, "an announced file is quarantined");
                    if let Err(e) = state.db.delete(FILES, &path) {
                        warn!(%path, error = %e, "cannot clear the file inbox");
                    }
                }
                Ok(Ok(added)) => {
                    failing.remove(&path);
                    if added {
                        state.metrics.files_catalogued.inc();
                    }
                    // A gateway's alarm rows: taken as its alarms if its fresh rows never
                    // brought them (an agent restarted during an outage); each once.
                    let alarms = twinlake_lake::LakePath::parse(&path)
                        .is_some_and(|p| p.table() == twinlake_edge::rules::ALARMS_TABLE);
                    if let (true, Some(g)) = (alarms, gateway.as_deref()) {
                        crate::rules::gateway::from_file(&state, g, &path, size).await;
                    }
                    if let Err(e) = state.db.delete(FILES, &path) {
                        warn!(%path, error = %e, "cannot clear the file inbox");
                    }
                }
                Err(e) => {
                    failed = true;
                    let (since, n) = failing.entry(path.clone()).or_insert((tokio::time::Instant::now(), 0));
                    *n += 1;
                    if *n >= GIVE_UP_TRIES && since.elapsed() >= GIVE_UP_AFTER {
                        // Not retried for ever: the file, if it ever lands, is found by the
                        // next start's listing (sql.rebuild_on_start).
                        warn!(%path, tries = *n, error = %e, "giving up cataloguing an announced file");
                        state.metrics.files_given_up.inc();
                        if let Err(e) = state.db.delete(FILES, &path) {
                            warn!(%path, error = %e, "cannot clear the file inbox");
                        }
                        failing.remove(&path);
                    } else {
                        debug!(%path, error = %e, "cannot catalogue a file yet");
                    }
                }
            }
        }
        let wait = if failed {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(30)
        };
        tokio::select! {
            _ = state.catalog_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = crate::state::stopped(&mut stop) => return,
        }
    }
}

/// The inbox: path, size and announcing gateway, as the gateway announced it.
/// An announced file: its path, size and the gateway that announced it.
type Announced = (String, Option<u64>, Option<String>);

fn inbox(db: &Db) -> Result<Vec<Announced>, Error> {
    let tx = db.0.begin_read()?;
    let t = tx.open_table(FILES)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        let rec = serde_json::from_slice::<serde_json::Value>(v.value()).ok();
        let size = rec
            .as_ref()
            .and_then(|j| j.pointer("/file/bytes").and_then(|b| b.as_u64()));
        let gateway = rec.as_ref().and_then(|j| j.get("gateway")?.as_str().map(str::to_owned));
        out.push((k.value().to_owned(), size, gateway));
    }
    Ok(out)
}

/// Bytes of results held to answer with a clean status before streaming the rest.
const PREFETCH_BYTES: usize = 4 << 20;

fn sql_error(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(status, msg.into())
}

/// A query error as an HTTP status: 403 for what SQL may not do here, 504 past the
/// timeout, 413 past the row limit, 400 for the rest.
fn query_error(e: twinlake_query::QueryError) -> ApiError {
    use twinlake_query::session::{LimitError, limit_error};
    let status = match &e {
        twinlake_query::QueryError::Refused(_) => StatusCode::FORBIDDEN,
        twinlake_query::QueryError::DataFusion(df) => match limit_error(df) {
            Some(LimitError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            Some(LimitError::TooManyRows(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            None => StatusCode::BAD_REQUEST,
        },
        _ => StatusCode::BAD_REQUEST,
    };
    sql_error(status, e.to_string())
}

/// `POST /v1/sql`: the SQL as the body (text) or `{"sql": …, "format": …}`; `format` (or
/// Accept) is json, ndjson, csv or arrow. One read-only statement in a session of its own.
/// A result past `sql.max_rows` is 413, a query past `sql.timeout` 504 (both with a JSON
/// error) as long as no byte has gone out; a statement SQL may not run here is 403.
pub async fn post_sql(
    p: Principal,
    State(s): State<Arc<AppState>>,
    Query(q): Query<SqlParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    p.require(Scope::Read)?;
    s.metrics.sql_queries.inc();
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let req = input::sql_request(is_json, &body, q).map_err(|e| sql_error(StatusCode::BAD_REQUEST, e))?;
    let sql = req.sql;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(Format::parse);
    let format = match req.format {
        Some(f) => Format::parse(&f).ok_or_else(|| {
            sql_error(
                StatusCode::BAD_REQUEST,
                format!("format {f:?}: use json, ndjson, csv or arrow"),
            )
        })?,
        None => accept.unwrap_or(Format::Json),
    };
    let mut stream = s.sql.query_as(p.user.clone(), &sql, None).await.map_err(|e| {
        s.metrics.sql_errors.inc();
        query_error(e)
    })?;
    let mut enc = Encoder::new(format, stream.schema());
    // Prefetch: small results get a status that reflects the whole query.
    let mut head: Vec<Bytes> = Vec::new();
    let mut held = 0usize;
    let mut done = false;
    while held < PREFETCH_BYTES {
        match stream.next().await {
            None => {
                done = true;
                break;
            }
            Some(Err(e)) => {
                s.metrics.sql_errors.inc();
                return Err(query_error(e.into()));
            }
            Some(Ok(batch)) => {
                let bytes = enc
                    .batch(&batch)
                    .map_err(|e| sql_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
                held += bytes.len();
                head.push(Bytes::from(bytes));
            }
        }
    }
    let content_type = format.content_type();
    if done {
        let tail = enc
            .finish()
            .map_err(|e| sql_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        head.push(Bytes::from(tail));
        let body: Vec<u8> = head.concat();
        return Ok(([(header::CONTENT_TYPE, content_type)], body).into_response());
    }
    // Large: stream the rest; a limit hit now ends the body early (an incomplete response).
    let rest = futures_util::stream::unfold((stream, enc, false), |(mut stream, mut enc, finished)| async move {
        if finished {
            return None;
        }
        match stream.next().await {
            Some(Ok(batch)) => {
                let item = enc.batch(&batch).map(Bytes::from).map_err(std::io::Error::other);
                Some((item, (stream, enc, false)))
            }
            Some(Err(e)) => Some((Err(std::io::Error::other(e.to_string())), (stream, enc, true))),
            None => {
                let tail = enc.finish().map(Bytes::from).map_err(std::io::Error::other);
                Some((tail, (stream, enc, true)))
            }
        }
    });
    let body = futures_util::stream::iter(head.into_iter().map(Ok::<_, std::io::Error>)).chain(rest);
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(body))
        .map_err(|e| sql_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
