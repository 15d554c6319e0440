//! Alarms a gateway's rules raised: its `gateway_alarms` rows, which reach the cloud twice
//! (as the link's fresh rows and, sealed, in a file), and once only after an agent that
//! restarted during an outage (its fresh rows were in memory; its WAL and files were not).
//! Each transition is taken once, keyed by (gateway, owner, rule, device, change, time).

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use futures_util::TryStreamExt;
use tracing::warn;
use twinlake_rules::Transition;

use super::alarms;
use crate::state::AppState;

/// Alarm transitions a gateway's rules raised (its `gateway_alarms` rows, from a committed
/// link batch or a catalogued file): stored as the cloud's alarms if the rule is the
/// owner's and placed on that gateway, each once; anything else is refused and counted.
pub fn from_gateway(state: &AppState, gateway: &str, owner: Option<&str>, rows: &[(i64, String, serde_json::Value)]) {
    let Some(owner) = owner else { return };
    let set = state.rules.current();
    let mut out = Vec::new();
    for (_, device, v) in rows {
        let (Some(id), Some(change), Some(at)) = (
            v.get("rule").and_then(|x| x.as_str()),
            v.get("change").and_then(|x| x.as_str()),
            v.get("at").and_then(serde_json::Value::as_u64),
        ) else {
            state.metrics.gateway_refusals.inc();
            continue;
        };
        let name = twinlake_rules::scope(owner, id);
        let Some(rule) = set.get(&name).filter(|r| r.gateway.as_deref() == Some(gateway)) else {
            state.metrics.gateway_refusals.inc();
            warn!(%gateway, rule = %name, "refused an alarm for a rule not placed on the gateway");
            continue;
        };
        let value = v.get("value").and_then(serde_json::Value::as_f64);
        let message = v
            .get("message")
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .chars()
            .take(512)
            .collect();
        let (rule_name, key) = (name.clone(), device.clone());
        let t = match change {
            "raised" => Transition::Raise {
                rule: rule_name,
                key,
                at,
                value,
                message,
            },
            "cleared" => Transition::Clear {
                rule: rule_name,
                key,
                at,
                value,
                message,
            },
            _ => {
                state.metrics.gateway_refusals.inc();
                continue;
            }
        };
        let once = format!("{gateway}/{owner}/{id}/{device}/{change}/{at}");
        out.push((once, rule.clone(), t));
    }
    if !out.is_empty()
        && let Err(e) = alarms::record_once(state, out)
    {
        warn!(error = %e, "cannot store a gateway's alarms");
    }
}

/// The rows of a catalogued `gateway_alarms` file a gateway wrote, taken as its alarms
/// (those its fresh rows brought already are skipped).
pub async fn from_file(state: &Arc<AppState>, gateway: &str, path: &str, size: Option<u64>) {
    let lake = state.sql.lake();
    let (store, prefix) = lake.store();
    let size = match size {
        Some(s) => s,
        None => match lake
            .files(twinlake_edge::rules::ALARMS_TABLE)
            .iter()
            .find(|f| f.path == path)
        {
            Some(f) => f.bytes,
            None => return,
        },
    };
    let batches: Vec<RecordBatch> = match twinlake_query::catalog::open_file(store, prefix, path, size).await {
        Ok(b) => match b.build() {
            Ok(s) => s.try_collect().await.unwrap_or_default(),
            Err(e) => return warn!(%path, error = %e, "cannot read a gateway's alarm file"),
        },
        Err(e) => return warn!(%path, error = %e, "cannot read a gateway's alarm file"),
    };
    let mut by_owner: std::collections::BTreeMap<String, Vec<(i64, String, serde_json::Value)>> = Default::default();
    for b in &batches {
        for (owner, row) in rows(b) {
            by_owner.entry(owner).or_default().push(row);
        }
    }
    for (owner, rows) in by_owner {
        from_gateway(state, gateway, Some(&owner), &rows);
    }
}

/// A batch's rows as `(owner, (time, device, {rule, change, at, value, message}))`.
fn rows(b: &RecordBatch) -> Vec<(String, (i64, String, serde_json::Value))> {
    let text = |name: &str| {
        let c = b.column_by_name(name)?;
        arrow::compute::cast(c, &DataType::Utf8).ok()
    };
    let (Some(owner), Some(device), Some(rule), Some(change)) =
        (text("owner"), text("device"), text("rule"), text("change"))
    else {
        return Vec::new();
    };
    let message = text("message");
    let at = b
        .column_by_name("at")
        .and_then(|c| arrow::compute::cast(c, &DataType::Int64).ok());
    let value = b
        .column_by_name("value")
        .and_then(|c| arrow::compute::cast(c, &DataType::Float64).ok());
    let (owner, device, rule, change) = (
        owner.as_string::<i32>(),
        device.as_string::<i32>(),
        rule.as_string::<i32>(),
        change.as_string::<i32>(),
    );
    let mut out = Vec::new();
    for i in 0..b.num_rows() {
        if owner.is_null(i) || device.is_null(i) {
            continue;
        }
        let at = at
            .as_ref()
            .map(|a| a.as_primitive::<Int64Type>())
            .filter(|a| a.is_valid(i))
            .map(|a| a.value(i));
        let value = value
            .as_ref()
            .map(|a| a.as_primitive::<Float64Type>())
            .filter(|a| a.is_valid(i))
            .map(|a| a.value(i));
        let message = message
            .as_ref()
            .map(|m| m.as_string::<i32>())
            .filter(|m| m.is_valid(i))
            .map(|m| m.value(i));
        let v = serde_json::json!({
            "rule": rule.is_valid(i).then(|| rule.value(i)),
            "change": change.is_valid(i).then(|| change.value(i)),
            "at": at,
            "value": value,
            "message": message,
        });
        out.push((owner.value(i).to_owned(), (0, device.value(i).to_owned(), v)));
    }
    out
}
