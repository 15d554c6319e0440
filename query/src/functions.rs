//! SQL functions beyond DataFusion's own:
//! * `time_bucket(interval, time)`: TimescaleDB's name for `date_bin` (origin at the epoch).
//! * `first(value, time)` / `last(value, time)`: the value at the earliest / latest time of a
//!   group, as InfluxDB's selectors; planned as `first_value(value ORDER BY time)`.
//! * `date_bin_gapfill`, `locf`, `interpolate`: gap filling (see [`crate::gapfill`]).
//! * `json_get(json, key, ...)` (text), `json_get_float`, `json_get_str`: read a twin's JSON.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Builder, StringArray, StringBuilder};
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, AggregateFunctionSimplification};
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// Registers every function of this module on `ctx`.
pub fn register(ctx: &SessionContext) {
    let date_bin = datafusion::functions::datetime::date_bin();
    ctx.register_udf(ScalarUDF::new_from_impl(Renamed::new("time_bucket", date_bin.clone())));
    ctx.register_udf(ScalarUDF::new_from_impl(Renamed::new(
        crate::gapfill::DATE_BIN_GAPFILL,
        date_bin,
    )));
    ctx.register_udf(ScalarUDF::new_from_impl(Identity::new(crate::gapfill::LOCF)));
    ctx.register_udf(ScalarUDF::new_from_impl(Identity::new(crate::gapfill::INTERPOLATE)));
    ctx.register_udaf(AggregateUDF::new_from_impl(Selector::new(true)));
    ctx.register_udaf(AggregateUDF::new_from_impl(Selector::new(false)));
    for kind in [JsonKind::Text, JsonKind::Float, JsonKind::Str] {
        ctx.register_udf(ScalarUDF::new_from_impl(JsonGet::new(kind)));
    }
}

/// A text argument (coerced to Utf8 by the function's signature) as a column of `rows`.
pub(crate) fn text_column(function: &str, v: &ColumnarValue, rows: usize) -> Result<StringArray> {
    v.to_array(rows)?
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| datafusion::error::DataFusionError::Execution(format!("{function}: text arguments expected")))
}

/// A scalar function under another name.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Renamed {
    name: &'static str,
    inner: Arc<ScalarUDF>,
}

impl Renamed {
    fn new(name: &'static str, inner: Arc<ScalarUDF>) -> Self {
        Self { name, inner }
    }
}

impl ScalarUDFImpl for Renamed {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.inner.invoke_with_args(args)
    }
}

/// `locf(x)` and `interpolate(x)`: markers for the gap-fill rule; alone they return `x`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Identity {
    name: &'static str,
    signature: Signature,
}

impl Identity {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Identity {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t) => Ok(t.clone()),
            None => plan_err!("{} takes one argument", self.name),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match args.args.into_iter().next() {
            Some(v) => Ok(v),
            None => exec_err!("{} takes one argument", self.name),
        }
    }
}

/// `first(value, time)` and `last(value, time)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Selector {
    first: bool,
    signature: Signature,
}

impl Selector {
    fn new(first: bool) -> Self {
        Self {
            first,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for Selector {
    fn name(&self) -> &str {
        if self.first { "first" } else { "last" }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t) => Ok(t.clone()),
            None => plan_err!("{}(value, time) takes two arguments", self.name()),
        }
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        // The simplifier always rewrites it first; reaching here means it was used as a
        // window function, which it does not support.
        plan_err!(
            "{}(value, time) is an aggregate; as a window function use {}_value(value) OVER (ORDER BY time)",
            self.name(),
            self.name()
        )
    }

    fn simplify(&self) -> Option<AggregateFunctionSimplification> {
        let first = self.first;
        Some(Box::new(move |f, _: &SimplifyContext| {
            let mut args = f.params.args.into_iter();
            let (Some(value), Some(time), None) = (args.next(), args.next(), args.next()) else {
                return plan_err!("first/last take (value, time)");
            };
            let order = vec![time.sort(true, false)];
            let mut e = if first {
                datafusion::functions_aggregate::first_last::first_value(value, order)
            } else {
                datafusion::functions_aggregate::first_last::last_value(value, order)
            };
            if let (Expr::AggregateFunction(agg), Some(filter)) = (&mut e, f.params.filter) {
                agg.params.filter = Some(filter);
            }
            Ok(e)
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum JsonKind {
    /// JSON text of the value (a string without quotes).
    Text,
    Float,
    Str,
}

/// `json_get*(json_text, key, key, ...)`: the value at a path of object keys (or array
/// indexes), null where there is none.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonGet {
    kind: JsonKind,
    signature: Signature,
}

impl JsonGet {
    fn new(kind: JsonKind) -> Self {
        Self {
            kind,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

fn json_at<'a>(mut v: &'a serde_json::Value, path: &[Option<String>]) -> Option<&'a serde_json::Value> {
    for key in path {
        let key = key.as_deref()?;
        v = match v {
            serde_json::Value::Object(m) => m.get(key)?,
            serde_json::Value::Array(a) => a.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

impl ScalarUDFImpl for JsonGet {
    fn name(&self) -> &str {
        match self.kind {
            JsonKind::Text => "json_get",
            JsonKind::Float => "json_get_float",
            JsonKind::Str => "json_get_str",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.is_empty() {
            return plan_err!("{}(json, key, ...) needs the JSON text", self.name());
        }
        Ok(vec![DataType::Utf8; arg_types.len()])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.kind {
            JsonKind::Float => DataType::Float64,
            _ => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let strs: Vec<StringArray> = args
            .args
            .iter()
            .map(|a| text_column(self.name(), a, rows))
            .collect::<Result<_>>()?;
        let Some((doc, keys)) = strs.split_first() else {
            return exec_err!("json_get needs arguments");
        };
        let mut floats = Float64Builder::with_capacity(rows);
        let mut texts = StringBuilder::with_capacity(rows, rows * 8);
        let mut path = Vec::with_capacity(keys.len());
        for i in 0..rows {
            path.clear();
            path.extend(keys.iter().map(|k| k.is_valid(i).then(|| k.value(i).to_owned())));
            let parsed = doc
                .is_valid(i)
                .then(|| serde_json::from_str::<serde_json::Value>(doc.value(i)).ok())
                .flatten();
            let v = parsed.as_ref().and_then(|p| json_at(p, &path));
            match self.kind {
                JsonKind::Float => floats.append_option(v.and_then(|v| match v {
                    serde_json::Value::Number(n) => n.as_f64(),
                    serde_json::Value::Bool(b) => Some(f64::from(u8::from(*b))),
                    serde_json::Value::String(s) => s.parse().ok(),
                    _ => None,
                })),
                JsonKind::Str => texts.append_option(v.and_then(|v| v.as_str())),
                JsonKind::Text => texts.append_option(v.filter(|v| !v.is_null()).map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })),
            }
        }
        let out: ArrayRef = match self.kind {
            JsonKind::Float => Arc::new(floats.finish()),
            _ => Arc::new(texts.finish()),
        };
        Ok(ColumnarValue::Array(out))
    }
}
