//! The `twins` and `devices` tables: the platform's current state, read when a query runs.
//!
//! `twins` has one row per twin: `user`, `device`, `version`, `online`, `gateway`,
//! `last_seen`, `connected_at`, `reported`, `desired`, `delta` (JSON text; `delta` is null when
//! desired and reported agree, `in_sync` says the same as a boolean), `tags`, `created`,
//! `updated`. Read a field with `json_get_float(reported, 'temp')`.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use serde_json::{Map, Value as Json};
use twinlake_twin::{Twin, TwinStore};

/// A registered device, as the `devices` table shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRow {
    pub user: String,
    pub device: String,
    pub name: String,
    pub description: String,
    pub gateway: Option<String>,
    pub enabled: bool,
    pub tags: Map<String, Json>,
    pub attributes: Map<String, Json>,
    /// ms since the epoch.
    pub created: u64,
}

/// Where the `devices` table comes from (the cloud's registry).
pub trait DeviceDirectory: Send + Sync + std::fmt::Debug {
    fn devices(&self) -> Vec<DeviceRow>;

    /// The gateway id rows of devices without a gateway (`gateway` none) carry: the cloud's
    /// own listener.
    fn local_gateway(&self) -> Option<String> {
        None
    }
}

fn ms_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn ts(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC"))
}

fn json_text(m: &Map<String, Json>) -> String {
    Json::Object(m.clone()).to_string()
}

/// The `twins` table.
#[derive(Debug)]
pub struct TwinsTable {
    store: TwinStore,
    schema: SchemaRef,
}

impl TwinsTable {
    pub fn new(store: TwinStore) -> Self {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user", DataType::Utf8, false),
            Field::new("device", DataType::Utf8, false),
            Field::new("version", DataType::Int64, false),
            Field::new("online", DataType::Boolean, false),
            Field::new("gateway", DataType::Utf8, true),
            Field::new("last_seen", ms_type(), true),
            Field::new("connected_at", ms_type(), true),
            Field::new("reported", DataType::Utf8, false),
            Field::new("desired", DataType::Utf8, false),
            Field::new("delta", DataType::Utf8, true),
            Field::new("in_sync", DataType::Boolean, false),
            Field::new("tags", DataType::Utf8, false),
            Field::new("created", ms_type(), false),
            Field::new("updated", ms_type(), false),
        ]));
        Self { store, schema }
    }

    fn twins_batch(&self, twins: &[Twin]) -> datafusion::error::Result<RecordBatch> {
        let s =
            |f: &dyn Fn(&Twin) -> String| -> ArrayRef { Arc::new(StringArray::from_iter_values(twins.iter().map(f))) };
        let deltas: Vec<Option<String>> = twins
            .iter()
            .map(|t| {
                let d = t.delta();
                (!d.is_empty()).then(|| json_text(&d))
            })
            .collect();
        let in_sync = BooleanArray::from(deltas.iter().map(|d| d.is_none()).collect::<Vec<_>>());
        let cols: Vec<ArrayRef> = vec![
            s(&|t| t.user.clone()),
            s(&|t| t.device.clone()),
            Arc::new(Int64Array::from_iter_values(twins.iter().map(|t| t.version as i64))),
            Arc::new(BooleanArray::from(
                twins.iter().map(|t| t.connection.online).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                twins.iter().map(|t| t.connection.gateway.clone()).collect::<Vec<_>>(),
            )),
            ts(twins.iter().map(|t| t.connection.last_seen.map(|v| v as i64)).collect()),
            ts(twins
                .iter()
                .map(|t| t.connection.connected_at.map(|v| v as i64))
                .collect()),
            s(&|t| json_text(&t.reported)),
            s(&|t| json_text(&t.desired)),
            Arc::new(StringArray::from(deltas)),
            Arc::new(in_sync),
            s(&|t| json_text(&t.tags)),
            ts(twins.iter().map(|t| Some(t.created as i64)).collect()),
            ts(twins.iter().map(|t| Some(t.updated as i64)).collect()),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

impl Source for TwinsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn batch(&self, user: Option<&str>) -> datafusion::error::Result<RecordBatch> {
        let twins = self
            .store
            .list(user)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        self.twins_batch(&twins)
    }
}

/// The `devices` table.
#[derive(Debug)]
pub struct DevicesTable {
    dir: Arc<dyn DeviceDirectory>,
    schema: SchemaRef,
}

impl DevicesTable {
    pub fn new(dir: Arc<dyn DeviceDirectory>) -> Self {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user", DataType::Utf8, false),
            Field::new("device", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("description", DataType::Utf8, false),
            Field::new("gateway", DataType::Utf8, true),
            Field::new("enabled", DataType::Boolean, false),
            Field::new("tags", DataType::Utf8, false),
            Field::new("attributes", DataType::Utf8, false),
            Field::new("created", ms_type(), false),
        ]));
        Self { dir, schema }
    }
}

impl Source for DevicesTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn batch(&self, user: Option<&str>) -> datafusion::error::Result<RecordBatch> {
        let mut rows = self.dir.devices();
        if let Some(u) = user {
            rows.retain(|d| d.user == u);
        }
        let s = |f: &dyn Fn(&DeviceRow) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
        };
        let cols: Vec<ArrayRef> = vec![
            s(&|d| d.user.clone()),
            s(&|d| d.device.clone()),
            s(&|d| d.name.clone()),
            s(&|d| d.description.clone()),
            Arc::new(StringArray::from(
                rows.iter().map(|d| d.gateway.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(BooleanArray::from(rows.iter().map(|d| d.enabled).collect::<Vec<_>>())),
            s(&|d| json_text(&d.tags)),
            s(&|d| json_text(&d.attributes)),
            ts(rows.iter().map(|d| Some(d.created as i64)).collect()),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

/// Where a state table's rows come from: read whole when a query runs, only `user`'s when
/// the session belongs to one.
pub trait Source: Send + Sync + std::fmt::Debug {
    fn schema(&self) -> SchemaRef;
    fn batch(&self, user: Option<&str>) -> datafusion::error::Result<RecordBatch>;
}

impl<S: Source + ?Sized> Source for Arc<S> {
    fn schema(&self) -> SchemaRef {
        (**self).schema()
    }

    fn batch(&self, user: Option<&str>) -> datafusion::error::Result<RecordBatch> {
        (**self).batch(user)
    }
}

/// A table of current state (twins, devices) for DataFusion.
#[derive(Debug)]
pub struct StateTable<S>(pub S);

#[async_trait::async_trait]
impl<S: Source + 'static> TableProvider for StateTable<S> {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let tenant = crate::tenant::tenant_of(state);
        let batch = self.0.batch(tenant.as_ref().map(|t| t.user.as_str()))?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.0.schema(),
            projection.cloned(),
        )?)
    }
}

/// A directory with no devices (a lake queried without a registry).
#[derive(Debug, Default)]
pub struct NoDevices;

impl DeviceDirectory for NoDevices {
    fn devices(&self) -> Vec<DeviceRow> {
        Vec::new()
    }
}
