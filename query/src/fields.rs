//! `fields`: every numeric field of every lake table in one long table (`time`, `device`,
//! `table`, `field`, `value`), booleans as 0 and 1, for charts that do not know a fleet's
//! tables in advance (the Grafana device dashboard charts every field of a device from it).
//!
//! It is planned at each scan over the session's own tables, so every branch keeps the
//! tenant filter of the table it reads. Filters on `table` and `field` (`=` or `IN` with
//! literals) choose the branches before planning, and the rest (`device`, `time`) reach
//! each branch's scan. The table and field names come from devices, so a scan plans at most
//! [`MAX_BRANCHES`] of them and says so rather than planning without bound.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Column, DFSchema, ScalarValue, TableReference};
use datafusion::datasource::{TableType, provider_as_source};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    BinaryExpr, EmptyRelation, Expr, LogicalPlan, LogicalPlanBuilder, Operator, TableProviderFilterPushDown, cast,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::lit;
use twinlake_lake::columns::FIXED_COLUMNS;

use crate::lake::{Lake, LakeTable};
use crate::tenant::{Ownership, TenantTable};

/// The table's name in SQL.
pub const FIELDS: &str = "fields";

/// The most (table, field) branches one scan plans.
pub const MAX_BRANCHES: usize = 2_000;

/// A lake table as the session's tenant sees it.
pub fn lake_table(lake: &Arc<Lake>, owners: &Arc<dyn Ownership>, name: &str) -> Option<Arc<dyn TableProvider>> {
    LakeTable::new(lake.clone(), name).map(|t| {
        Arc::new(TenantTable {
            inner: Arc::new(t),
            owners: owners.clone(),
        }) as Arc<dyn TableProvider>
    })
}

/// The `fields` table.
#[derive(Debug)]
pub struct FieldsTable {
    pub lake: Arc<Lake>,
    pub owners: Arc<dyn Ownership>,
}

fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn fields_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("time", time_type(), true),
        Field::new("device", DataType::Utf8, true),
        Field::new("table", DataType::Utf8, true),
        Field::new("field", DataType::Utf8, true),
        Field::new("value", DataType::Float64, true),
    ]))
}

/// Whether a column is charted: numbers and booleans.
fn charted(t: &DataType) -> bool {
    t.is_numeric() || *t == DataType::Boolean
}

/// The literal strings a filter allows for `column` (`column = 'x'`, `'x' = column`,
/// `column IN ('x', …)`); none when the filter is not of that shape.
fn allowed(filter: &Expr, column: &str) -> Option<BTreeSet<String>> {
    let is_col = |e: &Expr| matches!(e, Expr::Column(c) if c.name == column);
    let text = |e: &Expr| match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Some(s.clone()),
        _ => None,
    };
    match filter {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => {
            if is_col(left) {
                text(right).map(|s| BTreeSet::from([s]))
            } else if is_col(right) {
                text(left).map(|s| BTreeSet::from([s]))
            } else {
                None
            }
        }
        Expr::InList(l) if !l.negated && is_col(&l.expr) => l.list.iter().map(text).collect(),
        _ => None,
    }
}

/// What every filter allows for `column`, intersected; none: any.
fn wanted(filters: &[Expr], column: &str) -> Option<BTreeSet<String>> {
    filters
        .iter()
        .filter_map(|f| allowed(f, column))
        .reduce(|a, b| a.intersection(&b).cloned().collect())
}

/// One branch: `table`'s rows with `field` set, in the long shape.
fn branch(table: &str, provider: Arc<dyn TableProvider>, field: &str) -> DfResult<LogicalPlan> {
    let c = |n: &str| Expr::Column(Column::new_unqualified(n));
    LogicalPlanBuilder::scan(TableReference::bare(table), provider_as_source(provider), None)?
        .filter(c(field).is_not_null())?
        .project(vec![
            cast(c("time"), time_type()).alias("time"),
            cast(c("device"), DataType::Utf8).alias("device"),
            lit(table).alias("table"),
            lit(field).alias("field"),
            cast(c(field), DataType::Float64).alias("value"),
        ])?
        .build()
}

impl FieldsTable {
    /// The union of the branches the filters allow.
    fn plan(&self, filters: &[Expr]) -> DfResult<LogicalPlan> {
        let tables = wanted(filters, "table");
        let fields = wanted(filters, "field");
        let mut branches = Vec::new();
        for name in self.lake.table_names() {
            if name == FIELDS || tables.as_ref().is_some_and(|t| !t.contains(&name)) {
                continue;
            }
            let Some(provider) = lake_table(&self.lake, &self.owners, &name) else {
                continue;
            };
            let schema = provider.schema();
            if schema.column_with_name("time").is_none() || schema.column_with_name("device").is_none() {
                continue;
            }
            for f in schema.fields() {
                let n = f.name();
                if FIXED_COLUMNS.contains(&n.as_str()) || !charted(f.data_type()) {
                    continue;
                }
                if fields.as_ref().is_some_and(|w| !w.contains(n)) {
                    continue;
                }
                if branches.len() == MAX_BRANCHES {
                    return Err(DataFusionError::Plan(format!(
                        "{FIELDS}: more than {MAX_BRANCHES} (table, field) pairs; filter on \"table\" or \"field\""
                    )));
                }
                branches.push(branch(&name, provider.clone(), n)?);
            }
        }
        let mut it = branches.into_iter();
        let Some(first) = it.next() else {
            return Ok(LogicalPlan::EmptyRelation(EmptyRelation {
                produce_one_row: false,
                schema: Arc::new(DFSchema::try_from(fields_schema().as_ref().clone())?),
            }));
        };
        let mut b = LogicalPlanBuilder::from(first);
        for next in it {
            b = b.union(next)?;
        }
        b.build()
    }
}

#[async_trait::async_trait]
impl TableProvider for FieldsTable {
    fn schema(&self) -> SchemaRef {
        fields_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Every filter is applied above the union, so the answer is exact.
        Ok(vec![TableProviderFilterPushDown::Exact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut b = LogicalPlanBuilder::from(self.plan(filters)?);
        if let Some(f) = conjunction(filters.iter().cloned()) {
            b = b.filter(f)?;
        }
        if let Some(p) = projection {
            let schema = fields_schema();
            let cols: Vec<Expr> = p
                .iter()
                .map(|i| Expr::Column(Column::new_unqualified(schema.field(*i).name())))
                .collect();
            b = b.project(cols)?;
        }
        if let Some(n) = limit {
            b = b.limit(0, Some(n))?;
        }
        state.create_physical_plan(&b.build()?).await
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::col;

    use super::*;

    fn set(v: &[&str]) -> Option<BTreeSet<String>> {
        Some(v.iter().map(|s| (*s).to_owned()).collect())
    }

    /// Only `=` and `IN` with literal strings choose branches; anything else leaves every
    /// branch in (the filter is still applied above the union).
    #[test]
    fn branches_are_chosen_by_literal_equality_and_in_lists() {
        assert_eq!(wanted(&[col("table").eq(lit("a"))], "table"), set(&["a"]));
        assert_eq!(wanted(&[lit("a").eq(col("table"))], "table"), set(&["a"]));
        let both = [
            col("table").in_list(vec![lit("a"), lit("b")], false),
            col("table").eq(lit("b")),
        ];
        assert_eq!(wanted(&both, "table"), set(&["b"]));
        assert_eq!(
            wanted(&[col("table").eq(lit("a")), col("table").eq(lit("b"))], "table"),
            set(&[])
        );
        assert_eq!(wanted(&[col("table").in_list(vec![lit("a")], true)], "table"), None);
        assert_eq!(wanted(&[col("table").like(lit("a%"))], "table"), None);
        assert_eq!(wanted(&[col("field").eq(lit("a"))], "table"), None);
        assert_eq!(wanted(&[col("table").eq(lit(1))], "table"), None);
        assert_eq!(
            wanted(&[col("table").in_list(vec![lit("a"), col("field")], false)], "table"),
            None
        );
    }
}
