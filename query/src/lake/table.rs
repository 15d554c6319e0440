//! A lake table as a DataFusion table provider: the files a query's time and device filters
//! leave ([`Pruning`]), read as Parquet, and the fresh rows, in one union.

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{ScalarValue, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;

use super::{Lake, conform};
use crate::catalog::{self, FileMeta};

/// What the catalog knows of a file as statistics over the table's `schema`, so the planner
/// can tell a big table from a small one (a join builds on the smaller side): the exact row
/// count, and as estimates the compressed size and the time and device ranges (a file
/// without column statistics is catalogued as its whole hour, and byte-array statistics may
/// be cut short). A tenant's filter sits above the scan and makes all of it an estimate, so
/// no `count(*)` is answered from other users' rows.
fn file_statistics(schema: &Schema, f: &FileMeta) -> Statistics {
    let mut s = Statistics::new_unknown(schema);
    s.num_rows = Precision::Exact(usize::try_from(f.rows).unwrap_or(usize::MAX));
    s.total_byte_size = Precision::Inexact(usize::try_from(f.bytes).unwrap_or(usize::MAX));
    for (field, col) in schema.fields().iter().zip(s.column_statistics.iter_mut()) {
        let (min, max) = match field.name().as_str() {
            "time" => (
                ScalarValue::Int64(Some(f.min_time_us)),
                ScalarValue::Int64(Some(f.max_time_us)),
            ),
            "device" => match (&f.device_min, &f.device_max) {
                (Some(a), Some(b)) => (ScalarValue::Utf8(Some(a.clone())), ScalarValue::Utf8(Some(b.clone()))),
                _ => continue,
            },
            _ => continue,
        };
        if let (Ok(min), Ok(max)) = (min.cast_to(field.data_type()), max.cast_to(field.data_type())) {
            col.min_value = Precision::Inexact(min);
            col.max_value = Precision::Inexact(max);
        }
    }
    s
}

/// The part of a query's filters that prunes: a time range (µs, inclusive) and devices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pruning {
    pub min_us: Option<i64>,
    pub max_us: Option<i64>,
    pub devices: Option<Vec<String>>,
}

/// A time literal as µs since the epoch.
fn literal_us(v: &ScalarValue) -> Option<i64> {
    Some(match v {
        ScalarValue::TimestampSecond(Some(x), _) => x.checked_mul(1_000_000)?,
        ScalarValue::TimestampMillisecond(Some(x), _) => x.checked_mul(1000)?,
        ScalarValue::TimestampMicrosecond(Some(x), _) => *x,
        ScalarValue::TimestampNanosecond(Some(x), _) => x.div_euclid(1000),
        _ => return None,
    })
}

fn literal_str(v: &ScalarValue) -> Option<String> {
    match v {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
            Some(s.clone())
        }
        ScalarValue::Dictionary(_, inner) => literal_str(inner),
        _ => None,
    }
}

fn column_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Column(c) => Some(c.name.as_str()),
        Expr::Cast(c) => column_name(&c.expr),
        Expr::TryCast(c) => column_name(&c.expr),
        _ => None,
    }
}

impl Pruning {
    /// What `filters` (a conjunction) say about time and device.
    pub fn from_filters(filters: &[Expr]) -> Self {
        let mut p = Pruning::default();
        for f in filters {
            p.add(f);
        }
        p
    }

    fn lower(&mut self, us: i64) {
        self.min_us = Some(self.min_us.map_or(us, |m| m.max(us)));
    }

    fn upper(&mut self, us: i64) {
        self.max_us = Some(self.max_us.map_or(us, |m| m.min(us)));
    }

    fn add(&mut self, e: &Expr) {
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if *op == Operator::And {
                    self.add(left);
                    self.add(right);
                    return;
                }
                let (col, lit, op) = match (column_name(left), right.as_ref(), column_name(right), left.as_ref()) {
                    (Some(c), Expr::Literal(v, _), _, _) => (c, v, *op),
                    (_, _, Some(c), Expr::Literal(v, _)) => match op.swap() {
                        Some(o) => (c, v, o),
                        None => return,
                    },
                    _ => return,
                };
                match col {
                    "time" => {
                        let Some(us) = literal_us(lit) else { return };
                        match op {
                            Operator::Gt | Operator::GtEq => self.lower(us),
                            Operator::Lt | Operator::LtEq => self.upper(us),
                            Operator::Eq => {
                                self.lower(us);
                                self.upper(us);
                            }
                            _ => {}
                        }
                    }
                    "device" if op == Operator::Eq => {
                        if let Some(s) = literal_str(lit) {
                            self.devices = Some(vec![s]);
                        }
                    }
                    _ => {}
                }
            }
            Expr::Between(b) if !b.negated && column_name(&b.expr) == Some("time") => {
                if let (Expr::Literal(lo, _), Expr::Literal(hi, _)) = (b.low.as_ref(), b.high.as_ref())
                    && let (Some(lo), Some(hi)) = (literal_us(lo), literal_us(hi))
                {
                    self.lower(lo);
                    self.upper(hi);
                }
            }
            Expr::InList(l) if !l.negated && column_name(&l.expr) == Some("device") => {
                let mut ds = Vec::new();
                for e in &l.list {
                    match e {
                        Expr::Literal(v, _) => match literal_str(v) {
                            Some(s) => ds.push(s),
                            None => return,
                        },
                        _ => return,
                    }
                }
                self.devices = Some(ds);
            }
            _ => {}
        }
    }
}

/// One lake table for DataFusion.
#[derive(Debug)]
pub struct LakeTable {
    lake: Arc<Lake>,
    name: String,
    schema: SchemaRef,
}

impl LakeTable {
    /// The table `name` as it is now (its schema is fixed for this planning).
    pub fn new(lake: Arc<Lake>, name: &str) -> Option<Self> {
        let schema = lake.schema(name)?;
        Some(Self {
            lake,
            name: name.to_owned(),
            schema,
        })
    }
}

#[async_trait::async_trait]
impl TableProvider for LakeTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let pruning = Pruning::from_filters(filters);
        let snap = self.lake.snapshot(&self.name, &pruning);
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !snap.files.is_empty() {
            let n = state.config().target_partitions().max(1);
            let mut groups: Vec<Vec<PartitionedFile>> = (0..n.min(snap.files.len())).map(|_| Vec::new()).collect();
            let mut stats: Vec<Vec<Statistics>> = groups.iter().map(|_| Vec::new()).collect();
            // Largest first, each to the lightest group.
            let mut files = snap.files;
            files.sort_by_key(|f| std::cmp::Reverse(f.bytes));
            let mut weights = vec![0u64; groups.len()];
            for f in files {
                let (i, _) = weights.iter().enumerate().min_by_key(|(_, w)| **w).unwrap_or((0, &0));
                if let (Some(g), Some(st), Some(w)) = (groups.get_mut(i), stats.get_mut(i), weights.get_mut(i)) {
                    let file_stats = file_statistics(&self.schema, &f);
                    g.push(
                        PartitionedFile::new(catalog::full_path(&self.lake.prefix, &f.path).to_string(), f.bytes)
                            .with_statistics(Arc::new(file_stats.clone())),
                    );
                    st.push(file_stats);
                    *w += f.bytes;
                }
            }
            let group_stats: Vec<Statistics> = stats
                .iter()
                .map(|s| Statistics::try_merge_iter(s, &self.schema))
                .collect::<Result<_, _>>()?;
            let table_stats = Statistics::try_merge_iter(&group_stats, &self.schema)?;
            let groups: Vec<FileGroup> = groups
                .into_iter()
                .zip(group_stats)
                .map(|(g, s)| FileGroup::new(g).with_statistics(Arc::new(s)))
                .collect();
            // Filters are applied inside the files (late materialisation) only for a scan
            // of chosen devices, where files sorted by device skip most rows; time ranges are
            // pruned by file and row group already, and for full scans it cost more than it
            // saved (BENCHMARKS.md, "SQL").
            let source = ParquetSource::new(self.schema.clone())
                .with_table_parquet_options(state.table_options().parquet.clone())
                .with_pushdown_filters(pruning.devices.is_some());
            let config = FileScanConfigBuilder::new(self.lake.url.clone(), Arc::new(source))
                .with_file_groups(groups)
                .with_statistics(table_stats)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
            let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
            inputs.push(format.create_physical_plan(state, config).await?);
        }
        if !snap.fresh.is_empty() {
            let batches = snap
                .fresh
                .iter()
                .map(|b| conform(b, &self.schema))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            inputs.push(MemorySourceConfig::try_new_exec(
                &[batches],
                self.schema.clone(),
                projection.cloned(),
            )?);
        }
        if inputs.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        UnionExec::try_new(inputs)
    }
}
