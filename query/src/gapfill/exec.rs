//! The physical half of gap filling: [`GapFillPlanner`] plans a [`super::GapFill`] node as
//! a [`GapFillExec`], which fills the aggregate's (small) output in one pass.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, UInt32Array, new_null_array};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, ScalarValue, plan_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

use super::{Fill, GapFill, MAX_ROWS};

/// Plans [`GapFill`] nodes.
#[derive(Debug, Default)]
pub struct GapFillPlanner;

#[async_trait::async_trait]
impl ExtensionPlanner for GapFillPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn datafusion::catalog::Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(g) = node.as_any().downcast_ref::<GapFill>() else {
            return Ok(None);
        };
        let (Some(input), Some(logical)) = (physical_inputs.first(), logical_inputs.first()) else {
            return plan_err!("GapFill needs one input");
        };
        let schema = logical.schema();
        let phys = |e: &Expr| planner.create_physical_expr(e, schema, session, planning_ctx);
        let out_schema: SchemaRef = Arc::new(g.schema.as_arrow().clone());
        Ok(Some(Arc::new(GapFillExec {
            input: Arc::new(CoalescePartitionsExec::new(input.clone())),
            properties: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(out_schema.clone()),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Final,
                Boundedness::Bounded,
            )),
            schema: out_schema,
            time: g.time,
            keys: g.keys.clone(),
            fills: g.fills.clone(),
            stride: phys(&g.stride)?,
            origin: g.origin.as_ref().map(phys).transpose()?,
            lo: phys(&g.lo)?,
            hi: phys(&g.hi)?,
            hi_inclusive: g.hi_inclusive,
        })))
    }
}

/// Fills the gaps of its input (collected whole: an aggregate's output).
#[derive(Debug)]
pub struct GapFillExec {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
    schema: SchemaRef,
    time: usize,
    keys: Vec<usize>,
    fills: Vec<(usize, Fill)>,
    stride: Arc<dyn PhysicalExpr>,
    origin: Option<Arc<dyn PhysicalExpr>>,
    lo: Arc<dyn PhysicalExpr>,
    hi: Arc<dyn PhysicalExpr>,
    hi_inclusive: bool,
}

impl DisplayAs for GapFillExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "GapFillExec: fills={:?}", self.fills)
    }
}

impl ExecutionPlan for GapFillExec {
    fn name(&self) -> &'static str {
        "GapFillExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for e in [&self.stride, &self.lo, &self.hi]
            .into_iter()
            .chain(self.origin.as_ref())
        {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(input) = children.into_iter().next() else {
            return plan_err!("GapFillExec needs one input");
        };
        Ok(Arc::new(GapFillExec {
            input,
            properties: self.properties.clone(),
            schema: self.schema.clone(),
            time: self.time,
            keys: self.keys.clone(),
            fills: self.fills.clone(),
            stride: self.stride.clone(),
            origin: self.origin.clone(),
            lo: self.lo.clone(),
            hi: self.hi.clone(),
            hi_inclusive: self.hi_inclusive,
        }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return plan_err!("GapFillExec has one partition");
        }
        let input = self.input.clone();
        let schema = self.schema.clone();
        let empty = RecordBatch::new_empty(input.schema());
        let scalar = |e: &Arc<dyn PhysicalExpr>| -> Result<ScalarValue> {
            match e.evaluate(&empty)? {
                datafusion::logical_expr::ColumnarValue::Scalar(s) => Ok(s),
                datafusion::logical_expr::ColumnarValue::Array(a) if a.len() == 1 => ScalarValue::try_from_array(&a, 0),
                _ => plan_err!("gap filling: the time range and interval must be constants"),
            }
        };
        let params = Params {
            time: self.time,
            keys: self.keys.clone(),
            fills: self.fills.clone(),
            stride: scalar(&self.stride)?,
            origin: self.origin.as_ref().map(scalar).transpose()?,
            lo: scalar(&self.lo)?,
            hi: scalar(&self.hi)?,
            hi_inclusive: self.hi_inclusive,
        };
        let out_schema = schema.clone();
        let fut = async move {
            let batches = datafusion::physical_plan::collect(input, context).await?;
            let input_schema = batches.first().map(|b| b.schema());
            let batch = match input_schema {
                Some(s) => concat_batches(&s, &batches)?,
                None => RecordBatch::new_empty(Arc::new(Schema::new(
                    out_schema.fields().iter().cloned().collect::<Vec<_>>(),
                ))),
            };
            fill(&batch, &params, &out_schema)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(fut),
        )))
    }
}

struct Params {
    time: usize,
    keys: Vec<usize>,
    fills: Vec<(usize, Fill)>,
    stride: ScalarValue,
    origin: Option<ScalarValue>,
    lo: ScalarValue,
    hi: ScalarValue,
    hi_inclusive: bool,
}

fn unit_ns(u: TimeUnit) -> i64 {
    match u {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1000,
        TimeUnit::Nanosecond => 1,
    }
}

/// A timestamp scalar in `unit`.
fn to_unit(v: &ScalarValue, unit: TimeUnit) -> Result<i64> {
    let ns: i128 = match v {
        ScalarValue::TimestampSecond(Some(x), _) => i128::from(*x) * 1_000_000_000,
        ScalarValue::TimestampMillisecond(Some(x), _) => i128::from(*x) * 1_000_000,
        ScalarValue::TimestampMicrosecond(Some(x), _) => i128::from(*x) * 1000,
        ScalarValue::TimestampNanosecond(Some(x), _) => i128::from(*x),
        ScalarValue::Utf8(Some(s)) => {
            let t = ScalarValue::Utf8(Some(s.clone())).cast_to(&DataType::Timestamp(TimeUnit::Nanosecond, None))?;
            return to_unit(&t, unit);
        }
        other => return plan_err!("gap filling: {other} is not a time"),
    };
    match i64::try_from(ns.div_euclid(i128::from(unit_ns(unit)))) {
        Ok(t) => Ok(t),
        Err(_) => plan_err!("gap filling: {v} is out of range"),
    }
}

fn stride_in(v: &ScalarValue, unit: TimeUnit) -> Result<i64> {
    let ns: i128 = match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            i128::from(i.days) * 86_400_000_000_000 + i128::from(i.nanoseconds)
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            i128::from(i.days) * 86_400_000_000_000 + i128::from(i.milliseconds) * 1_000_000
        }
        ScalarValue::DurationSecond(Some(x)) => i128::from(*x) * 1_000_000_000,
        ScalarValue::DurationMillisecond(Some(x)) => i128::from(*x) * 1_000_000,
        ScalarValue::DurationMicrosecond(Some(x)) => i128::from(*x) * 1000,
        ScalarValue::DurationNanosecond(Some(x)) => i128::from(*x),
        other => return plan_err!("gap filling needs a fixed interval (no months or years), not {other}"),
    };
    match i64::try_from(ns / i128::from(unit_ns(unit))) {
        Ok(s) if s > 0 => Ok(s),
        _ => plan_err!("gap filling needs a positive interval of at most 292 years"),
    }
}

/// One output row: the input row it copies (if any) and its bucket time.
#[derive(Clone, Copy)]
struct Out {
    src: Option<u32>,
    time: Option<i64>,
    group_row: u32,
}

fn fill(batch: &RecordBatch, p: &Params, out_schema: &SchemaRef) -> Result<RecordBatch> {
    let time_field = out_schema.field(p.time);
    let DataType::Timestamp(unit, tz) = time_field.data_type() else {
        return plan_err!("date_bin_gapfill: the bucket column is not a timestamp");
    };
    let unit = *unit;
    let stride = stride_in(&p.stride, unit)?;
    let origin = p.origin.as_ref().map(|o| to_unit(o, unit)).transpose()?.unwrap_or(0);
    // In i128: a far origin or range must be an error, not an overflow.
    let bin = |t: i64| -> Result<i64> {
        let (t, o, st) = (i128::from(t), i128::from(origin), i128::from(stride));
        match i64::try_from(o + (t - o).div_euclid(st) * st) {
            Ok(b) => Ok(b),
            Err(_) => plan_err!("gap filling: the time range is too far from the origin"),
        }
    };
    let first = bin(to_unit(&p.lo, unit)?)?;
    let hi = to_unit(&p.hi, unit)?;
    let last = bin(if p.hi_inclusive { hi } else { hi.saturating_sub(1) })?;
    let buckets = if last < first {
        0
    } else {
        usize::try_from((i128::from(last) - i128::from(first)) / i128::from(stride) + 1).unwrap_or(usize::MAX)
    };

    // Sort by keys, then time.
    let time_col = arrow::compute::cast(batch.column(p.time), &DataType::Int64)?;
    let mut sort: Vec<SortColumn> = p
        .keys
        .iter()
        .map(|k| SortColumn {
            values: batch.column(*k).clone(),
            options: None,
        })
        .collect();
    sort.push(SortColumn {
        values: time_col.clone(),
        options: None,
    });
    let order = if batch.num_rows() > 0 {
        lexsort_to_indices(&sort, None)?
    } else {
        UInt32Array::from(Vec::<u32>::new())
    };
    let times = take(&time_col, &order, None)?;
    let times = times
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| DataFusionError::Internal("gapfill: time as int64".into()))?;
    let key_cols: Vec<ArrayRef> = p
        .keys
        .iter()
        .map(|k| take(batch.column(*k), &order, None))
        .collect::<std::result::Result<_, _>>()?;
    let converter = RowConverter::new(key_cols.iter().map(|c| SortField::new(c.data_type().clone())).collect())?;
    let rows = converter.convert_columns(&key_cols)?;

    // Group boundaries in sorted order.
    let n = batch.num_rows();
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=n {
        if i == n || (!key_cols.is_empty() && rows.row(i) != rows.row(i - 1)) {
            if i > start {
                groups.push((start, i));
            }
            start = i;
        }
    }
    if groups.len().saturating_mul(buckets) > MAX_ROWS {
        return plan_err!(
            "gap filling would make {} groups x {buckets} buckets, more than {MAX_ROWS} rows: use a larger interval or a shorter range",
            groups.len()
        );
    }

    let mut out: Vec<Out> = Vec::with_capacity(groups.len() * buckets + n);
    let mut group_of: Vec<(usize, usize)> = Vec::with_capacity(groups.len());
    for &(s, e) in &groups {
        let begin = out.len();
        let mut j = s;
        let row = |j: usize| Out {
            src: Some(j as u32),
            time: times.is_valid(j).then(|| times.value(j)),
            group_row: s as u32,
        };
        for b in 0..buckets {
            // first + b * stride is at most `last`, but the product alone can pass i64 when
            // `first` is below zero and `last` near the end of time: in i128.
            let t = i64::try_from(i128::from(first) + b as i128 * i128::from(stride)).unwrap_or(last);
            while j < e && (times.is_null(j) || times.value(j) < t) {
                out.push(row(j));
                j += 1;
            }
            if j < e && times.is_valid(j) && times.value(j) == t {
                out.push(row(j));
                j += 1;
            } else {
                out.push(Out {
                    src: None,
                    time: Some(t),
                    group_row: s as u32,
                });
            }
        }
        while j < e {
            out.push(row(j));
            j += 1;
        }
        group_of.push((begin, out.len()));
    }

    let sorted = |c: usize| take(batch.column(c), &order, None);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(out_schema.fields().len());
    for (c, field) in out_schema.fields().iter().enumerate() {
        let col: ArrayRef = if c == p.time {
            let t = Int64Array::from(out.iter().map(|o| o.time).collect::<Vec<_>>());
            arrow::compute::cast(&t, &DataType::Timestamp(unit, tz.clone()))?
        } else if p.keys.contains(&c) {
            let idx = UInt32Array::from(out.iter().map(|o| o.group_row).collect::<Vec<_>>());
            take(&sorted(c)?, &idx, None)?
        } else if n == 0 {
            new_null_array(field.data_type(), out.len())
        } else {
            let values = sorted(c)?;
            let how = p.fills.iter().find(|(i, _)| *i == c).map_or(Fill::Null, |(_, f)| *f);
            match how {
                Fill::Null => take(
                    &values,
                    &UInt32Array::from(out.iter().map(|o| o.src).collect::<Vec<_>>()),
                    None,
                )?,
                Fill::Locf => {
                    let mut idx = Vec::with_capacity(out.len());
                    for &(b, e) in &group_of {
                        let mut last = None;
                        for o in out.get(b..e).unwrap_or_default() {
                            if let Some(j) = o.src.filter(|j| values.is_valid(*j as usize)) {
                                last = Some(j);
                            }
                            idx.push(o.src.filter(|j| values.is_valid(*j as usize)).or(last));
                        }
                    }
                    take(&values, &UInt32Array::from(idx), None)?
                }
                Fill::Interpolate => {
                    let f = arrow::compute::cast(&values, &DataType::Float64)?;
                    let f = f
                        .as_any()
                        .downcast_ref::<Float64Array>()
                        .ok_or_else(|| DataFusionError::Internal("interpolate: as float".into()))?;
                    let mut vals: Vec<Option<f64>> = out
                        .iter()
                        .map(|o| o.src.filter(|j| f.is_valid(*j as usize)).map(|j| f.value(j as usize)))
                        .collect();
                    for &(b, e) in &group_of {
                        // Known points of the group; the rows between two are interpolated.
                        let known: Vec<(usize, i64, f64)> = (b..e)
                            .filter_map(|k| Some((k, out.get(k)?.time?, (*vals.get(k)?)?)))
                            .collect();
                        for w in known.windows(2) {
                            let &[(k0, t0, v0), (k1, t1, v1)] = w else { continue };
                            for q in k0 + 1..k1 {
                                if let (Some(slot), Some(tq)) = (vals.get_mut(q), out.get(q).and_then(|o| o.time)) {
                                    *slot = Some(v0 + (v1 - v0) * (tq - t0) as f64 / (t1 - t0).max(1) as f64);
                                }
                            }
                        }
                    }
                    let filled: ArrayRef = Arc::new(Float64Array::from(vals));
                    arrow::compute::cast(&filled, field.data_type())?
                }
            }
        };
        columns.push(col);
    }
    let schema = Arc::new(Schema::new(
        out_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect::<Vec<Field>>(),
    ));
    Ok(RecordBatch::try_new(schema, columns)?)
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::IntervalMonthDayNano;

    use super::*;

    /// Intervals that used to panic (a division by zero once the stride wrapped to 0 in
    /// 64 bits) or wrap: each is an error now (#13, finding 12).
    #[test]
    fn strides_out_of_range_are_errors() {
        let iv =
            |days: i32, nanos: i64| ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(0, days, nanos)));
        // 2^64 µs exactly: truncated to 64 bits it was 0.
        assert!(stride_in(&iv(213_503_982, 28_909_551_616_000), TimeUnit::Microsecond).is_err());
        assert!(stride_in(&iv(i32::MAX, i64::MAX), TimeUnit::Nanosecond).is_err());
        assert!(stride_in(&iv(0, 0), TimeUnit::Microsecond).is_err());
        assert!(stride_in(&iv(-1, 0), TimeUnit::Microsecond).is_err());
        assert_eq!(stride_in(&iv(1, 0), TimeUnit::Microsecond).unwrap(), 86_400_000_000);
        let far = ScalarValue::TimestampNanosecond(Some(i64::MAX), None);
        assert!(to_unit(&far, TimeUnit::Nanosecond).is_ok());
        let sec = ScalarValue::TimestampSecond(Some(i64::MAX), None);
        assert!(to_unit(&sec, TimeUnit::Nanosecond).is_err());
    }
}
