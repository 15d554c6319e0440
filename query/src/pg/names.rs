//! What PostgreSQL clients expect of names and types: `quote_ident`, PostgreSQL's type
//! names, and an `information_schema` that speaks them (for Grafana, DBeaver, psql).

use std::sync::Arc;

use arrow::array::Array;
use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::common::{Result as DfResult, exec_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};

/// PostgreSQL 15's keywords that `quote_ident` quotes: reserved, column-name and
/// type/function-name keywords (kwlist.h; the unreserved ones need no quotes).
const QUOTED_KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

/// PostgreSQL's `quote_ident`: quotes unless the name is lower case letters, digits, `_`
/// and `$` (not first) and not a keyword that needs quoting; doubles inner quotes.
pub fn quote_ident(s: &str) -> String {
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && !QUOTED_KEYWORDS.contains(&s);
    if plain {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// `quote_ident(text)`, PostgreSQL-exact (Grafana's builder lists names through it).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct QuoteIdent {
    signature: Signature,
}

impl Default for QuoteIdent {
    fn default() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for QuoteIdent {
    fn name(&self) -> &str {
        "quote_ident"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        Ok(vec![DataType::Utf8; arg_types.len()])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let Some(first) = args.args.first() else {
            return exec_err!("quote_ident(text) takes one argument");
        };
        let names = crate::functions::text_column("quote_ident", first, rows)?;
        let out: arrow::array::StringArray = names.iter().map(|n| n.map(quote_ident)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// The PostgreSQL name of a column type, as `information_schema.columns.data_type` has it.
pub fn pg_type_name(dt: &DataType) -> String {
    match dt {
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Timestamp(_, None) => "timestamp without time zone".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 | DataType::Decimal128(_, _) | DataType::Decimal256(_, _) => "numeric".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Dictionary(_, v) => pg_type_name(v),
        DataType::Interval(_) => "interval".into(),
        DataType::List(_) | DataType::LargeList(_) => "ARRAY".into(),
        other => other.to_string(),
    }
}

/// `information_schema` as PostgreSQL clients read it: DataFusion's tables, with
/// `columns.data_type` in PostgreSQL's names (`double precision`, not `Float64`).
///
/// It lives inside the catalog list it describes, so it holds that list weakly (a strong
/// reference would be a cycle that keeps the lake, and its database, open forever).
#[derive(Debug)]
pub struct PgInformationSchema {
    catalogs: std::sync::Weak<dyn datafusion::catalog::CatalogProviderList>,
}

impl PgInformationSchema {
    pub fn new(catalogs: &Arc<dyn datafusion::catalog::CatalogProviderList>) -> Self {
        Self {
            catalogs: Arc::downgrade(catalogs),
        }
    }

    fn inner(&self) -> Option<datafusion::catalog::information_schema::InformationSchemaProvider> {
        self.catalogs
            .upgrade()
            .map(datafusion::catalog::information_schema::InformationSchemaProvider::new)
    }
}

#[async_trait]
impl datafusion::catalog::SchemaProvider for PgInformationSchema {
    fn table_names(&self) -> Vec<String> {
        self.inner().map(|i| i.table_names()).unwrap_or_default()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn datafusion::catalog::TableProvider>>> {
        let Some(inner) = self.inner() else {
            return Ok(None);
        };
        let Some(t) = inner.table(name).await? else {
            return Ok(None);
        };
        if name != "columns" {
            return Ok(Some(t));
        }
        Ok(Some(Arc::new(PgColumns(t))))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner().is_some_and(|i| i.table_exist(name))
    }
}

/// `information_schema.columns` with PostgreSQL type names.
#[derive(Debug)]
struct PgColumns(Arc<dyn datafusion::catalog::TableProvider>);

#[async_trait]
impl datafusion::catalog::TableProvider for PgColumns {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::View
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        _filters: &[datafusion::logical_expr::Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let plan = self.0.scan(state, None, &[], None).await?;
        let batches = datafusion::physical_plan::collect(plan, state.task_ctx()).await?;
        let schema = self.0.schema();
        let idx = schema.index_of("data_type")?;
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            let mut cols = b.columns().to_vec();
            if let Some(col) = cols.get_mut(idx)
                && let Some(names) = col.as_any().downcast_ref::<arrow::array::StringArray>()
            {
                let mapped: arrow::array::StringArray = names
                    .iter()
                    .map(|n| {
                        n.map(|n| match parse_arrow_type(n) {
                            Some(dt) => pg_type_name(&dt),
                            None => n.to_owned(),
                        })
                    })
                    .collect();
                *col = Arc::new(mapped);
            }
            out.push(arrow::array::RecordBatch::try_new(schema.clone(), cols)?);
        }
        Ok(datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
            &[out],
            schema,
            projection.cloned(),
        )?)
    }
}

fn parse_arrow_type(s: &str) -> Option<DataType> {
    s.parse::<DataType>().ok()
}
