//! What one SQL client may do, on every surface (HTTP, the Postgres wire, Flight SQL):
//!
//! * read only: no DDL, DML, `COPY` or external tables ([`read_only`]), and no object store
//!   but the lake's ([`LakeOnly`]);
//! * a session of its own per connection or request, so a setting one client changes
//!   never reaches another (see `Engine::session`);
//! * bounded: memory per query ([`CappedPool`]) inside a server-wide pool, a cap on queries
//!   running at once, and a deadline and a row limit on every result ([`Guarded`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation};
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::prelude::SQLOptions;
use futures::Stream;
use object_store::ObjectStore;
use tokio::sync::OwnedSemaphorePermit;
use url::Url;

/// The limits every SQL surface applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlLimits {
    /// Rows one result may have; more is an error asking for a LIMIT.
    pub max_rows: u64,
    /// How long one query may take, waiting for a slot included. A client's own
    /// `statement_timeout` can only shorten it.
    pub timeout: Duration,
    /// Memory one query may hold in its operators (sorts, joins, aggregates).
    pub memory_per_query: usize,
    /// Memory all queries together may hold.
    pub memory_total: usize,
    /// Queries running at once; more wait for a slot until their deadline.
    pub max_concurrent: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self {
            max_rows: 1_000_000,
            timeout: Duration::from_secs(60),
            memory_per_query: 512 << 20,
            memory_total: 2 << 30,
            max_concurrent: 16,
        }
    }
}

impl SqlLimits {
    /// The deadline of a query a client asked to end after `client` (0 or none: the
    /// server's), never later than the server's own.
    pub fn timeout_for(&self, client: Option<Duration>) -> Duration {
        match client {
            Some(c) if !c.is_zero() => c.min(self.timeout),
            _ => self.timeout,
        }
    }
}

/// A limit a query ran into: carried as `DataFusionError::External` so each surface can
/// answer with its own status (HTTP 504/413/503, SQLSTATE 57014/54000, gRPC codes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("the query ran past its timeout ({0:?}; sql.timeout is the server's maximum)")]
    Timeout(Duration),
    #[error("the result has more than {0} rows (sql.max_rows): add a LIMIT or aggregate")]
    TooManyRows(u64),
}

impl From<LimitError> for DataFusionError {
    fn from(e: LimitError) -> Self {
        DataFusionError::External(Box::new(e))
    }
}

/// The limit behind `e`, if a limit is what failed.
pub fn limit_error(e: &DataFusionError) -> Option<&LimitError> {
    match e {
        DataFusionError::External(inner) => inner.downcast_ref::<LimitError>(),
        DataFusionError::Context(_, inner) => limit_error(inner),
        DataFusionError::Shared(inner) => limit_error(inner),
        _ => None,
    }
}

/// The catalog and schema the lake's tables are in.
pub const CATALOG: &str = "twinlake";
pub const SCHEMA: &str = "public";

/// Refuses any plan that is not a read-only query.
pub fn check_read_only(plan: &datafusion::logical_expr::LogicalPlan) -> Result<(), crate::QueryError> {
    read_only()
        .verify_plan(plan)
        .map_err(|e| crate::QueryError::Refused(format!("{e}: SQL is read-only here")))
}

/// Read only: queries, and nothing that defines, changes or writes anything.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// An object store registry that knows the lake and nothing else: no `file://` (DataFusion's
/// default would serve the server's whole disk), no `http(s)://`, and nothing registered
/// later.
#[derive(Debug)]
pub struct LakeOnly {
    url: Url,
    store: Arc<dyn ObjectStore>,
}

impl LakeOnly {
    pub fn new(url: Url, store: Arc<dyn ObjectStore>) -> Self {
        Self { url, store }
    }

    fn same_store(&self, url: &Url) -> bool {
        url.scheme() == self.url.scheme() && url.authority() == self.url.authority()
    }
}

impl ObjectStoreRegistry for LakeOnly {
    fn register_store(&self, _url: &Url, _store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        None
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        if self.same_store(url) {
            Ok(self.store.clone())
        } else {
            Err(DataFusionError::Plan(format!(
                "{url} is not readable: SQL reads the lake's tables only"
            )))
        }
    }
}

/// One session's share of the server-wide pool: at most `limit` bytes of it. It lives as
/// long as its session, so `live` counts the sessions not yet freed.
#[derive(Debug)]
pub struct CappedPool {
    inner: Arc<dyn MemoryPool>,
    used: AtomicUsize,
    limit: usize,
    live: Arc<AtomicUsize>,
}

impl CappedPool {
    pub fn new(inner: Arc<dyn MemoryPool>, limit: usize, live: Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::Relaxed);
        Self {
            inner,
            used: AtomicUsize::new(0),
            limit,
            live,
        }
    }
}

impl Drop for CappedPool {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Display for CappedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "per-query pool of {} bytes within {}", self.limit, self.inner)
    }
}

impl MemoryPool for CappedPool {
    fn name(&self) -> &str {
        "twinlake-per-query"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
        self.inner.grow(reservation, additional)
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
        self.inner.shrink(reservation, shrink)
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DfResult<()> {
        let taken = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(additional).filter(|n| *n <= self.limit)
            })
            .map_err(|used| {
                DataFusionError::ResourcesExhausted(format!(
                    "the query needs more than sql.memory_per_query ({} bytes; {used} in use, {additional} more asked by {})",
                    self.limit,
                    reservation.consumer().name()
                ))
            });
        taken?;
        if let Err(e) = self.inner.try_grow(reservation, additional) {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

/// What a stream item counts toward `sql.max_rows`.
pub trait RowCount {
    fn row_count(&self) -> u64;
}

impl RowCount for RecordBatch {
    fn row_count(&self) -> u64 {
        self.num_rows() as u64
    }
}

/// A result stream under its query's limits: it ends with an error at the deadline or past
/// `max_rows`, and holds the query's slot until it is dropped. Every surface wraps its
/// results in one: record batches here, the Postgres wire's rows in `pg`.
pub struct Bounded<S> {
    inner: S,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    rows: u64,
    max_rows: u64,
    done: bool,
    _slot: Arc<OwnedSemaphorePermit>,
}

/// A query's record batches under its limits.
pub type Guarded = Bounded<SendableRecordBatchStream>;

impl<S> std::fmt::Debug for Bounded<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bounded")
            .field("rows", &self.rows)
            .field("max_rows", &self.max_rows)
            .finish_non_exhaustive()
    }
}

impl<S> Bounded<S> {
    pub fn new(
        inner: S,
        deadline: tokio::time::Instant,
        timeout: Duration,
        max_rows: u64,
        slot: Arc<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            timeout,
            rows: 0,
            max_rows,
            done: false,
            _slot: slot,
        }
    }
}

impl Guarded {
    /// The result's schema.
    pub fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

impl<S, T, E> Stream for Bounded<S>
where
    S: Stream<Item = Result<T, E>> + Unpin,
    T: RowCount,
    E: From<LimitError>,
{
    type Item = Result<T, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let failed = if self.deadline.as_mut().poll(cx).is_ready() {
            LimitError::Timeout(self.timeout)
        } else {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(item))) => {
                    self.rows = self.rows.saturating_add(item.row_count());
                    if self.rows <= self.max_rows {
                        return Poll::Ready(Some(Ok(item)));
                    }
                    LimitError::TooManyRows(self.max_rows)
                }
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                other => return other,
            }
        };
        self.done = true;
        Poll::Ready(Some(Err(failed.into())))
    }
}

impl RecordBatchStream for Guarded {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}
