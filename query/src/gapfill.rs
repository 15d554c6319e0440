//! Gap filling, as InfluxDB 3 does it:
//!
//! ```sql
//! SELECT date_bin_gapfill(INTERVAL '1 minute', time) AS minute, device,
//!        locf(avg(temp)) AS temp, interpolate(max(hum)) AS hum, count(*) AS n
//! FROM climate
//! WHERE time >= '2024-01-01T00:00:00Z' AND time < '2024-01-01T01:00:00Z'
//! GROUP BY minute, device
//! ```
//!
//! Every bucket of the WHERE clause's time range appears for every group; a bucket with no
//! rows has nulls, or the last value carried forward (`locf`), or the value linearly
//! interpolated between its neighbours (`interpolate`). The lower bound is required, the
//! upper one defaults to `now()`.
//!
//! An analyzer rule ([`GapFillRule`]) turns `date_bin_gapfill` in a GROUP BY into `date_bin`
//! and puts a [`GapFill`] node over the aggregate; the projection above loses its
//! `locf`/`interpolate` wrappers, which become the node's fill strategies. [`GapFillExec`]
//! fills the aggregate's (small) output in one pass.

use std::fmt;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::common::{DFSchema, DFSchemaRef, DataFusionError, Result, plan_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Expr, Extension, LogicalPlan, Operator, Projection, UserDefinedLogicalNodeCore,
};
use datafusion::optimizer::AnalyzerRule;

pub const DATE_BIN_GAPFILL: &str = "date_bin_gapfill";
pub const LOCF: &str = "locf";
pub const INTERPOLATE: &str = "interpolate";

/// Output rows one gap fill may make at most.
pub const MAX_ROWS: usize = 10_000_000;

/// How a column's empty buckets are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum Fill {
    Null,
    Locf,
    Interpolate,
}

/// The logical node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GapFill {
    input: LogicalPlan,
    schema: DFSchemaRef,
    /// The bucket column and the group key columns, by index in the input.
    time: usize,
    keys: Vec<usize>,
    /// Columns filled other than with nulls.
    fills: Vec<(usize, Fill)>,
    stride: Expr,
    origin: Option<Expr>,
    lo: Expr,
    hi: Expr,
    hi_inclusive: bool,
}

impl PartialOrd for GapFill {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (self == other).then_some(std::cmp::Ordering::Equal)
    }
}

impl GapFill {
    fn exprs(&self) -> Vec<Expr> {
        let mut v = vec![self.stride.clone(), self.lo.clone(), self.hi.clone()];
        v.extend(self.origin.clone());
        v
    }
}

/// The input schema with every column nullable but the bucket and the keys.
fn nullable_schema(input: &DFSchema, time: usize, keys: &[usize]) -> Result<DFSchemaRef> {
    let fields = input
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            let nullable = f.is_nullable() || (i != time && !keys.contains(&i));
            (q.cloned(), Arc::new(f.as_ref().clone().with_nullable(nullable)))
        })
        .collect();
    Ok(Arc::new(DFSchema::new_with_metadata(fields, input.metadata().clone())?))
}

impl UserDefinedLogicalNodeCore for GapFill {
    fn name(&self) -> &str {
        "GapFill"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        self.exprs()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "GapFill: stride={}, range=[{}, {}{}, fills={:?}",
            self.stride,
            self.lo,
            self.hi,
            if self.hi_inclusive { "]" } else { ")" },
            self.fills
        )
    }

    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let mut exprs = exprs.into_iter();
        let mut inputs = inputs.into_iter();
        let (Some(stride), Some(lo), Some(hi), Some(input)) = (exprs.next(), exprs.next(), exprs.next(), inputs.next())
        else {
            return plan_err!("GapFill: wrong number of expressions or inputs");
        };
        Ok(Self {
            schema: nullable_schema(input.schema(), self.time, &self.keys)?,
            input,
            stride,
            lo,
            hi,
            origin: exprs.next(),
            ..self.clone()
        })
    }
}

fn gapfill_call(e: &Expr) -> Option<&ScalarFunction> {
    match e {
        Expr::ScalarFunction(f) if f.func.name() == DATE_BIN_GAPFILL => Some(f),
        Expr::Alias(a) => gapfill_call(&a.expr),
        _ => None,
    }
}

fn has_gapfill(agg: &Aggregate) -> bool {
    agg.group_expr.iter().any(|e| gapfill_call(e).is_some())
}

/// The analyzer rule that plans gap filling.
#[derive(Debug, Default)]
pub struct GapFillRule;

impl AnalyzerRule for GapFillRule {
    fn analyze(&self, plan: LogicalPlan, config: &ConfigOptions) -> Result<LogicalPlan> {
        let plan = plan.transform_up_with_subqueries(|n| rewrite(n, config))?.data;
        let mut misplaced = false;
        plan.apply_with_subqueries(|n| {
            if let LogicalPlan::Aggregate(a) = n
                && has_gapfill(a)
            {
                misplaced = true;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        if misplaced {
            return plan_err!("date_bin_gapfill must be a GROUP BY key of a plain SELECT (no HAVING)");
        }
        Ok(plan)
    }

    fn name(&self) -> &str {
        "gap_fill"
    }
}

/// The time bounds the filters under `plan` put on column `time`.
fn time_bounds(plan: &LogicalPlan, time: &str) -> (Option<Expr>, Option<(Expr, bool)>) {
    let mut lo = None;
    let mut hi = None;
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Filter(f) => {
                for c in split_conjunction(&f.predicate) {
                    bound(c, time, &mut lo, &mut hi);
                }
                node = &f.input;
            }
            LogicalPlan::Projection(p) => node = &p.input,
            LogicalPlan::SubqueryAlias(s) => node = &s.input,
            LogicalPlan::TableScan(t) => {
                for c in &t.filters {
                    bound(c, time, &mut lo, &mut hi);
                }
                break;
            }
            _ => break,
        }
    }
    (lo, hi)
}

fn is_time_col(e: &Expr, time: &str) -> bool {
    match e {
        Expr::Column(c) => c.name == time,
        Expr::Cast(c) => is_time_col(&c.expr, time),
        _ => false,
    }
}

fn bound(e: &Expr, time: &str, lo: &mut Option<Expr>, hi: &mut Option<(Expr, bool)>) {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (other, op) = if is_time_col(left, time) && right.column_refs().is_empty() {
                (right.as_ref(), *op)
            } else if is_time_col(right, time) && left.column_refs().is_empty() {
                match op.swap() {
                    Some(o) => (left.as_ref(), o),
                    None => return,
                }
            } else {
                return;
            };
            match op {
                Operator::Gt | Operator::GtEq => *lo = Some(other.clone()),
                Operator::Lt => *hi = Some((other.clone(), false)),
                Operator::LtEq => *hi = Some((other.clone(), true)),
                Operator::Eq => {
                    *lo = Some(other.clone());
                    *hi = Some((other.clone(), true));
                }
                _ => {}
            }
        }
        Expr::Between(b)
            if !b.negated
                && is_time_col(&b.expr, time)
                && b.low.column_refs().is_empty()
                && b.high.column_refs().is_empty() =>
        {
            *lo = Some(b.low.as_ref().clone());
            *hi = Some((b.high.as_ref().clone(), true));
        }
        _ => {}
    }
}

fn rewrite(node: LogicalPlan, config: &ConfigOptions) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Projection(proj) = &node else {
        return Ok(Transformed::no(node));
    };
    let LogicalPlan::Aggregate(agg) = proj.input.as_ref() else {
        return Ok(Transformed::no(node));
    };
    let Some(gi) = agg.group_expr.iter().position(|e| gapfill_call(e).is_some()) else {
        return Ok(Transformed::no(node));
    };
    let call = agg
        .group_expr
        .get(gi)
        .and_then(gapfill_call)
        .cloned()
        .ok_or_else(|| DataFusionError::Internal("gapfill".into()))?;
    let mut args = call.args.clone().into_iter();
    let (Some(stride), Some(time_expr)) = (args.next(), args.next()) else {
        return plan_err!("date_bin_gapfill(interval, time[, origin]) takes two or three arguments");
    };
    let origin = args.next();
    let Some(time_col) = time_expr.column_refs().into_iter().next().map(|c| c.name.clone()) else {
        return plan_err!("date_bin_gapfill: the second argument must be a time column");
    };
    let (lo, hi) = time_bounds(&agg.input, &time_col);
    let Some(lo) = lo else {
        return plan_err!(
            "date_bin_gapfill needs a lower bound on {time_col} in WHERE, such as {time_col} >= now() - interval '1 hour'"
        );
    };
    let (hi, hi_inclusive) = hi.unwrap_or_else(|| (datafusion::functions::datetime::now(config).call(vec![]), true));

    // date_bin under the name the projection refers to.
    let mut group_expr = agg.group_expr.clone();
    let binned = datafusion::functions::datetime::date_bin().call(call.args.clone());
    if let Some(g) = group_expr.get_mut(gi) {
        let old_name = g.schema_name().to_string();
        *g = binned.alias(old_name);
    }
    let new_agg = LogicalPlan::Aggregate(Aggregate::try_new(
        agg.input.clone(),
        group_expr,
        agg.aggr_expr.clone(),
    )?);
    let agg_schema = new_agg.schema().clone();
    let n_groups = agg.group_expr.len();
    let keys: Vec<usize> = (0..n_groups).filter(|i| *i != gi).collect();

    let mut fills = Vec::new();
    let mut exprs = Vec::with_capacity(proj.expr.len());
    for e in &proj.expr {
        let (inner, name) = match e {
            Expr::Alias(a) => (a.expr.as_ref(), a.name.clone()),
            other => (other, other.schema_name().to_string()),
        };
        let fill = match inner {
            Expr::ScalarFunction(f) if f.func.name() == LOCF => Some(Fill::Locf),
            Expr::ScalarFunction(f) if f.func.name() == INTERPOLATE => Some(Fill::Interpolate),
            _ => None,
        };
        let (Some(fill), Expr::ScalarFunction(f)) = (fill, inner) else {
            exprs.push(e.clone());
            continue;
        };
        let Some(Expr::Column(c)) = f.args.first() else {
            return plan_err!(
                "{}() takes an aggregate of the query, such as locf(avg(temp))",
                f.func.name()
            );
        };
        let idx = agg_schema.index_of_column(c)?;
        if idx < n_groups {
            return plan_err!("{}() fills an aggregate, not a GROUP BY key", f.func.name());
        }
        fills.push((idx, fill));
        exprs.push(Expr::Column(c.clone()).alias(name));
    }
    let gap = GapFill {
        schema: nullable_schema(&agg_schema, gi, &keys)?,
        input: new_agg,
        time: gi,
        keys,
        fills,
        stride,
        origin,
        lo,
        hi,
        hi_inclusive,
    };
    let filled = LogicalPlan::Extension(Extension { node: Arc::new(gap) });
    Ok(Transformed::yes(LogicalPlan::Projection(Projection::try_new(
        exprs,
        Arc::new(filled),
    )?)))
}

mod exec;
pub use exec::{GapFillExec, GapFillPlanner};
