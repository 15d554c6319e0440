//! Delivering endpoint calls to their webhooks.
//!
//! Calls wait in the `webhooks` table (written in the same transaction that applied the
//! gateway's batch, so none is lost in a crash) and go out oldest first. A failed delivery
//! is tried again with back-off up to `webhooks.attempts` times, then dropped and counted.

use std::sync::Arc;

use serde_json::Value as Json;
use tracing::{debug, warn};

use crate::Error;
use crate::jobs::{Event, Job, Outcome, Queue};
use crate::state::AppState;
use crate::store::{ENDPOINTS, EndpointDef, WEBHOOKS, WebhookJob};

/// The endpoint call queue.
fn queue(state: &AppState) -> Queue {
    Queue {
        table: WEBHOOKS,
        name: "webhooks",
        attempts: state.cfg.webhooks.attempts,
        retry_min: state.cfg.webhooks.retry_min,
    }
}

impl Job for WebhookJob {
    fn attempts(&self) -> u32 {
        self.attempts
    }

    fn set_attempts(&mut self, n: u32) {
        self.attempts = n;
    }
}

/// Delivers queued calls until the process ends.
pub async fn run(state: Arc<AppState>) {
    let q = queue(&state);
    let st = state.clone();
    let deliver = move |job: WebhookJob| {
        let st = st.clone();
        async move {
            match deliver(&st, &job).await {
                Ok(()) => Outcome::Delivered,
                Err(Undeliverable(why)) => Outcome::Refused(why),
                Err(Retry(why)) => Outcome::Failed(why),
            }
        }
    };
    let m = state.clone();
    let on = move |job: &WebhookJob, e: Event<'_>| match e {
        Event::Delivered => {
            m.metrics.webhooks_delivered.inc();
        }
        Event::Dropped(why) => {
            m.metrics.webhooks_dropped.inc();
            warn!(endpoint = %job.endpoint, user = %job.user, %why, "endpoint call dropped");
        }
        Event::GaveUp(why) => {
            m.metrics.webhooks_failed.inc();
            m.metrics.webhooks_dropped.inc();
            warn!(endpoint = %job.endpoint, user = %job.user, %why, attempts = job.attempts + 1, "webhook failed; giving up");
        }
        Event::Retrying(why, backoff) => {
            m.metrics.webhooks_failed.inc();
            warn!(endpoint = %job.endpoint, %why, retry_in_ms = backoff.as_millis() as u64, "webhook failed; will retry");
        }
    };
    crate::jobs::work(state.clone(), q, &state.webhook_wake, deliver, on).await;
}

/// Queues an endpoint call in `tx` (committed by the caller, who then wakes the worker).
/// Past `webhooks.max_queued` the oldest call is dropped, counted and logged.
pub fn enqueue(state: &AppState, tx: &redb::WriteTransaction, job: &WebhookJob) -> Result<(), Error> {
    if crate::jobs::push(tx, &queue(state), job, state.cfg.webhooks.max_queued)? {
        state.metrics.webhooks_dropped.inc();
        warn!("webhook queue full; dropped the oldest endpoint call");
    }
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
    let url = reqwest::Url::parse(&def.url).map_err(|e| Undeliverable(format!("url: {e}")))?;
    if let Err(why) = state.webhook_policy.check_url(&url) {
        state.metrics.webhooks_refused.inc();
        return Err(Undeliverable(why));
    }
    let method = reqwest::Method::from_bytes(def.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| Undeliverable(format!("bad method {:?}", def.method)))?;
    let body = match &def.body {
        Some(template) => render(template, job),
        None => job.payload.as_ref().map(Json::to_string).unwrap_or_default(),
    };
    let mut req = state
        .http
        .request(method, url)
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
    let resp = req.send().await.map_err(|e| {
        if refused(&e) {
            state.metrics.webhooks_refused.inc();
            Undeliverable(error_chain(&e))
        } else {
            Retry(error_chain(&e))
        }
    })?;
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

/// Whether the client refused the call's address (the resolver or a redirect).
fn refused(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<crate::egress::Refused>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The error with its causes, `a: b: c`.
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
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
