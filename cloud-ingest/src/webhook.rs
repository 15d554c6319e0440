//! Delivering endpoint calls to their webhooks.
//!
//! Calls wait in the `webhooks` table (written in the same transaction that applied the
//! gateway's batch, so none is lost in a crash) and go out oldest first. A failed delivery
//! is tried again with back-off up to `webhooks.attempts` times, then dropped and counted.

use std::sync::Arc;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable};
use serde_json::Value as Json;
use tracing::{debug, warn};

use crate::Error;
use crate::state::AppState;
use crate::store::{self, ENDPOINTS, EndpointDef, WEBHOOKS, WebhookJob};

/// Delivers queued calls until the process ends.
pub async fn run(state: Arc<AppState>) {
    let mut backoff = state.cfg.webhooks.retry_min;
    let mut stop = state.stop.subscribe();
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        let notified = state.webhook_wake.notified();
        match next_job(&state) {
            Ok(Some((id, job))) => {
                let outcome = deliver(&state, &job).await;
                let done = match outcome {
                    Ok(()) => {
                        state.metrics.webhooks_delivered.inc();
                        backoff = state.cfg.webhooks.retry_min;
                        true
                    }
                    Err(Undeliverable(why)) => {
                        state.metrics.webhooks_dropped.inc();
                        warn!(endpoint = %job.endpoint, user = %job.user, %why, "endpoint call dropped");
                        true
                    }
                    Err(Retry(why)) if job.attempts + 1 >= state.cfg.webhooks.attempts => {
                        state.metrics.webhooks_failed.inc();
                        state.metrics.webhooks_dropped.inc();
                        warn!(endpoint = %job.endpoint, user = %job.user, %why, attempts = job.attempts + 1, "webhook failed; giving up");
                        true
                    }
                    Err(Retry(why)) => {
                        state.metrics.webhooks_failed.inc();
                        warn!(endpoint = %job.endpoint, %why, retry_in_ms = backoff.as_millis() as u64, "webhook failed; will retry");
                        let mut again = job.clone();
                        again.attempts += 1;
                        if let Err(e) = update(&state, id, Some(&again)) {
                            warn!(error = %e, "cannot update the webhook queue");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = crate::state::stopped(&mut stop) => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        false
                    }
                };
                if done && let Err(e) = update(&state, id, None) {
                    warn!(error = %e, "cannot update the webhook queue");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Ok(None) => tokio::select! {
                _ = notified => {}
                _ = crate::state::stopped(&mut stop) => return,
            },
            Err(e) => {
                warn!(error = %e, "cannot read the webhook queue");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Queues an endpoint call in `tx` (committed by the caller). Past `webhooks.max_queued`
/// the oldest call is dropped, counted and logged.
pub fn enqueue(state: &AppState, tx: &redb::WriteTransaction, job: &WebhookJob) -> Result<(), Error> {
    let mut table = tx.open_table(WEBHOOKS)?;
    let next = table.last()?.map_or(1, |(k, _)| k.value() + 1);
    table.insert(next, store::encode(job).as_slice())?;
    if redb::ReadableTableMetadata::len(&table)? > state.cfg.webhooks.max_queued
        && let Some((k, _)) = table.pop_first()?
    {
        state.metrics.webhooks_dropped.inc();
        warn!(job = k.value(), "webhook queue full; dropped the oldest endpoint call");
    }
    Ok(())
}

fn next_job(state: &AppState) -> Result<Option<(u64, WebhookJob)>, Error> {
    let tx = state.db.0.begin_read()?;
    let t = tx.open_table(WEBHOOKS)?;
    let Some((k, v)) = t.first()? else { return Ok(None) };
    let id = k.value();
    Ok(Some((id, store::decode("webhooks", &id.to_string(), v.value())?)))
}

fn update(state: &AppState, id: u64, job: Option<&WebhookJob>) -> Result<(), Error> {
    let tx = state.db.0.begin_write()?;
    {
        let mut t = tx.open_table(WEBHOOKS)?;
        match job {
            Some(j) => {
                t.insert(id, store::encode(j).as_slice())?;
            }
            None => {
                t.remove(id)?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

enum Failure {
    Undeliverable(String),
    Retry(String),
}
use Failure::{Retry, Undeliverable};

async fn deliver(state: &AppState, job: &WebhookJob) -> Result<(), Failure> {
    let def: EndpointDef = match state.db.get(ENDPOINTS, &format!("{}/{}", job.user, job.endpoint)) {
        Ok(Some(d)) => d,
        Ok(None) => return Err(Undeliverable("no such endpoint is defined".into())),
        Err(e) => return Err(Retry(e.to_string())),
    };
    let method = reqwest::Method::from_bytes(def.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| Undeliverable(format!("bad method {:?}", def.method)))?;
    let body = match &def.body {
        Some(template) => render(template, job),
        None => job.payload.as_ref().map(Json::to_string).unwrap_or_default(),
    };
    let mut req = state
        .http
        .request(method, &def.url)
        .timeout(state.cfg.webhooks.timeout)
        .header(
            "content-type",
            def.content_type.as_deref().unwrap_or("application/json"),
        )
        .header("x-twinlake-device", &job.device)
        .header("x-twinlake-endpoint", &job.endpoint)
        .body(body);
    for (k, v) in &def.headers {
        let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        req = req.header(k.as_str(), v);
    }
    let resp = req.send().await.map_err(|e| Retry(e.to_string()))?;
    let status = resp.status();
    if status.is_success() {
        debug!(endpoint = %job.endpoint, %status, "webhook delivered");
        Ok(())
    } else if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408 {
        Err(Undeliverable(format!("the webhook answered {status}")))
    } else {
        Err(Retry(format!("the webhook answered {status}")))
    }
}

/// Fills `{{payload}}`, `{{payload.<field>}}`, `{{device}}`, `{{user}}`, `{{endpoint}}`
/// and `{{timestamp}}`; anything else is left as written.
pub fn render(template: &str, job: &WebhookJob) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let (before, after) = rest.split_at(start);
        out.push_str(before);
        let Some(end) = after.find("}}") else {
            out.push_str(after);
            return out;
        };
        let name = after.get(2..end).unwrap_or("").trim();
        let payload = job.payload.clone().unwrap_or(Json::Null);
        let value = match name {
            "payload" => Some(payload.to_string()),
            "device" => Some(job.device.clone()),
            "user" => Some(job.user.clone()),
            "endpoint" => Some(job.endpoint.clone()),
            "timestamp" => Some(job.at.to_string()),
            n => n.strip_prefix("payload.").map(|field| {
                let v = field.split('.').fold(&payload, |v, k| v.get(k).unwrap_or(&Json::Null));
                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
            }),
        };
        match value {
            Some(v) => out.push_str(&v),
            None => out.push_str(after.get(..end + 2).unwrap_or("")),
        }
        rest = after.get(end + 2..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_known_names_and_keep_the_rest() {
        let job = WebhookJob {
            user: "u".into(),
            device: "d".into(),
            endpoint: "e".into(),
            at: 7,
            payload: Some(serde_json::json!({"t": 21.5, "s": "hi", "n": {"x": 1}})),
            attempts: 0,
        };
        assert_eq!(
            render(
                r#"{"dev":"{{device}}","p":{{payload}},"t":{{payload.t}},"s":"{{payload.s}}","x":{{payload.n.x}},"k":"{{other}}","at":{{timestamp}}"#,
                &job
            ),
            r#"{"dev":"d","p":{"t":21.5,"s":"hi","n":{"x":1}},"t":21.5,"s":"hi","x":1,"k":"{{other}}","at":7"#
        );
        assert_eq!(render("open {{", &job), "open {{");
    }
}
