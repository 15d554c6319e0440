//! The `alarms` SQL table: every stored alarm, open and cleared, read when a query runs;
//! a user's session sees only that user's.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use twinlake_query::system::Source;
use twinlake_rules::Alarm;

use crate::store::Db;

#[derive(Debug)]
pub struct AlarmsTable {
    db: Db,
    schema: SchemaRef,
}

fn ms() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

impl AlarmsTable {
    pub fn new(db: Db) -> Self {
        let text = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            text("user", false),
            text("rule", false),
            text("kind", false),
            text("key", false),
            text("device", true),
            text("severity", false),
            text("state", false),
            Field::new("raised_at", ms(), false),
            Field::new("updated_at", ms(), false),
            Field::new("acknowledged_at", ms(), true),
            text("acknowledged_by", true),
            Field::new("cleared_at", ms(), true),
            text("cleared_by", true),
            Field::new("count", DataType::Int64, false),
            Field::new("value", DataType::Float64, true),
            text("message", false),
        ]));
        Self { db, schema }
    }
}

impl Source for AlarmsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn batch(&self, user: Option<&str>) -> datafusion::error::Result<RecordBatch> {
        let rows = super::alarms::all(&self.db, user)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        let s =
            |f: &dyn Fn(&Alarm) -> String| -> ArrayRef { Arc::new(StringArray::from_iter_values(rows.iter().map(f))) };
        let o = |f: &dyn Fn(&Alarm) -> Option<String>| -> ArrayRef {
            Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
        };
        let t = |f: &dyn Fn(&Alarm) -> Option<u64>| -> ArrayRef {
            Arc::new(
                TimestampMillisecondArray::from(rows.iter().map(|a| f(a).map(|v| v as i64)).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            )
        };
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|a| a.id as i64))),
            s(&|a| a.owner.clone()),
            s(&|a| a.rule.clone()),
            s(&|a| a.kind.clone()),
            s(&|a| a.key.clone()),
            o(&|a| a.device.clone()),
            s(&|a| a.severity.as_str().into()),
            s(&|a| a.state.as_str().into()),
            t(&|a| Some(a.raised_at)),
            t(&|a| Some(a.updated_at)),
            t(&|a| a.acknowledged_at),
            o(&|a| a.acknowledged_by.clone()),
            t(&|a| a.cleared_at),
            o(&|a| a.cleared_by.clone()),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|a| a.count as i64))),
            Arc::new(Float64Array::from(rows.iter().map(|a| a.value).collect::<Vec<_>>())),
            s(&|a| a.message.clone()),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}
