//! A span's rollup rows, computed by DataFusion over the span's rows, and its file.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use parquet::file::metadata::KeyValue;

use super::{ALL, Aggregate, RollupDef};
use crate::QueryError;
use crate::catalog::Covers;
use crate::lake::conform;
use twinlake_lake::columns::{ColumnType, FIXED_COLUMNS, dictionary_type, time_type};
use twinlake_lake::file::{ROLLUP_KEY, Writer, WriterSettings, writer_properties};
use twinlake_lake::path::DAY_US;
use twinlake_lake::{Hour, LakePath};

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The fields rolled and their aggregates: those asked for that the rows have as numbers,
/// or every numeric field.
fn fields(def: &RollupDef, rows: &RecordBatch) -> Vec<(String, Vec<Aggregate>)> {
    rows.schema()
        .fields()
        .iter()
        .filter(|f| !FIXED_COLUMNS.contains(&f.name().as_str()))
        .filter(|f| matches!(ColumnType::of(f.data_type()), Some(ColumnType::Int | ColumnType::Float)))
        .filter_map(|f| {
            let aggs = if def.fields.is_empty() {
                ALL.to_vec()
            } else {
                def.fields.get(f.name())?.clone()
            };
            Some((f.name().clone(), aggs))
        })
        .collect()
}

/// The SQL of one rollup over the table `src`.
fn sql(def: &RollupDef, fields: &[(String, Vec<Aggregate>)]) -> String {
    let every = def.every.as_secs();
    let mut cols = vec![
        format!("date_bin(INTERVAL '{every} seconds', \"time\") AS \"time\""),
        "\"device\"".to_owned(),
        "last_value(\"gateway\" ORDER BY \"time\") AS \"gateway\"".to_owned(),
        "\"owner\"".to_owned(),
        format!("date_bin(INTERVAL '{every} seconds', \"time\") + INTERVAL '{every} seconds' AS \"end\""),
        "count(*) AS \"rows\"".to_owned(),
    ];
    for (name, aggs) in fields {
        let f = quote(name);
        let out = |suffix: &str| quote(&format!("{name}_{suffix}"));
        for a in aggs {
            match a {
                Aggregate::Min => cols.push(format!("min({f}) AS {}", out("min"))),
                Aggregate::Max => cols.push(format!("max({f}) AS {}", out("max"))),
                Aggregate::Avg => {
                    cols.push(format!("sum({f}) AS {}", out("sum")));
                    if !aggs.contains(&Aggregate::Count) {
                        cols.push(format!("count({f}) AS {}", out("count")));
                    }
                }
                Aggregate::Count => cols.push(format!("count({f}) AS {}", out("count"))),
                Aggregate::Last => cols.push(format!(
                    "last_value({f} ORDER BY \"time\") FILTER (WHERE {f} IS NOT NULL) AS {}",
                    out("last")
                )),
            }
        }
    }
    format!(
        "SELECT {} FROM src GROUP BY 1, \"device\", \"owner\" ORDER BY \"owner\", \"device\", 1",
        cols.join(", ")
    )
}

/// `def` over `rows` (one span's, sorted): one row per (owner, device, interval), in the
/// lake's fixed column types.
pub async fn aggregate(def: &RollupDef, rows: &RecordBatch) -> Result<RecordBatch, QueryError> {
    let fields = fields(def, rows);
    let ctx = SessionContext::new();
    let table = MemTable::try_new(rows.schema(), vec![vec![rows.clone()]])?;
    ctx.register_table("src", Arc::new(table))?;
    let batches = ctx.sql(&sql(def, &fields)).await?.collect().await?;
    let Some(first) = batches.first() else {
        return Ok(RecordBatch::new_empty(rows.schema()));
    };
    let all = arrow::compute::concat_batches(&first.schema(), &batches)?;
    // Fixed columns in the lake's types; `end` a time; aggregates as they came.
    let mut out_fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (f, c) in all.schema().fields().iter().zip(all.columns()) {
        let t = match f.name().as_str() {
            "time" | "end" => time_type(),
            "device" | "gateway" | "owner" => dictionary_type(),
            _ => f.data_type().clone(),
        };
        let nullable = !matches!(f.name().as_str(), "time" | "device" | "gateway");
        cols.push(cast(c, &t)?);
        out_fields.push(Field::new(f.name(), t, nullable));
    }
    let schema = Arc::new(Schema::new(out_fields));
    conform(&RecordBatch::try_new(schema.clone(), cols)?, &schema)
}

/// The rollup file of a span: its path in the rollup table and its bytes, with what it
/// covers in its footer. A day span is a day file (dense encodings).
pub fn encode(name: &str, rows: &RecordBatch, covers: &Covers, stamp: u64) -> Result<(String, Vec<u8>), QueryError> {
    let hour = Hour::of(covers.start_us)
        .ok_or_else(|| QueryError::Catalog(format!("span {} outside the lake's years", covers.start_us)))?;
    let json = serde_json::to_string(covers).map_err(|e| QueryError::Catalog(e.to_string()))?;
    let extra = [KeyValue::new(ROLLUP_KEY.into(), json)];
    let settings = WriterSettings::default();
    let (path, bytes) = if covers.span_us == DAY_US {
        let bytes = twinlake_lake::dense::encode_day_with(rows, settings, 0, &extra)?;
        (LakePath::day(name, hour, stamp), bytes)
    } else {
        let props = writer_properties(settings, Writer::Compaction { replaced: 0 })?;
        let mut kv = props.key_value_metadata().cloned().unwrap_or_default();
        kv.extend(extra);
        let props = props.into_builder().set_key_value_metadata(Some(kv)).build();
        (
            LakePath::compacted(name, hour, stamp),
            twinlake_lake::file::encode(std::slice::from_ref(rows), &props)?,
        )
    };
    let path = path.map_err(|e| QueryError::Catalog(e.to_string()))?;
    Ok((path.to_string(), bytes))
}
