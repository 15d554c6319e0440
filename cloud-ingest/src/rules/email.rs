//! Alarm emails: queued in the database with the alarm's transaction, sent over SMTP by
//! lettre from one task, at most `email.max_per_minute`, retried with back-off.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, warn};
use twinlake_rules::Alarm;

use super::alarms::{Change, to_json};
use crate::Error;
use crate::jobs::{Event, Job, Outcome, Queue};
use crate::state::AppState;
use crate::store::EMAILS;

/// An email waiting to go out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailJob {
    pub user: String,
    pub to: Vec<String>,
    pub subject: String,
    pub body: String,
    #[serde(default)]
    pub attempts: u32,
}

/// Queues the email for an alarm's change in `tx` (the caller wakes the sender once `tx`
/// commits). Past `email.max_queued` the oldest goes (counted).
pub fn enqueue(
    state: &AppState,
    tx: &redb::WriteTransaction,
    to: &[String],
    a: &Alarm,
    change: Change,
) -> Result<(), Error> {
    let job = EmailJob {
        user: a.owner.clone(),
        to: to.to_vec(),
        subject: one_line(&format!(
            "[Twinlake] {} {}: {} on {}",
            a.severity.as_str(),
            change.as_str(),
            a.rule,
            a.key
        )),
        body: format!(
            "Alarm {} ({}) of rule {} on {} was {}.\n\n{}\n\n{}\n",
            a.id,
            a.severity.as_str(),
            a.rule,
            a.key,
            change.as_str(),
            a.message,
            serde_json::to_string_pretty(&to_json(a, Some(change))).unwrap_or_default()
        ),
        attempts: 0,
    };
    if crate::jobs::push(tx, &queue(state), &job, state.cfg.email.max_queued)? {
        state.metrics.emails.get_or_create(&outcome("dropped")).inc();
        warn!("email queue full; dropped the oldest alarm email");
    }
    Ok(())
}

/// A subject on one line of at most 200 characters: a SQL rule's key comes from data a
/// device wrote, and must not end the header or start another.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect()
}

fn outcome(o: &str) -> Vec<(String, String)> {
    crate::metrics::label("outcome", o)
}

/// The email queue.
fn queue(state: &AppState) -> Queue {
    Queue {
        table: EMAILS,
        name: "emails",
        attempts: state.cfg.email.attempts,
        retry_min: state.cfg.email.retry_min,
    }
}

impl Job for EmailJob {
    fn attempts(&self) -> u32 {
        self.attempts
    }

    fn set_attempts(&mut self, n: u32) {
        self.attempts = n;
    }
}

/// Whether a send failed for good (the server refused the message) or may work later.
enum Failure {
    Permanent(String),
    Transient(String),
}

async fn send(transport: &AsyncSmtpTransport<Tokio1Executor>, from: &str, job: &EmailJob) -> Result<(), Failure> {
    let mut b = Message::builder()
        .from(
            from.parse()
                .map_err(|e| Failure::Permanent(format!("email.from: {e}")))?,
        )
        .subject(job.subject.as_str())
        .header(ContentType::TEXT_PLAIN);
    for to in &job.to {
        b = b.to(to.parse().map_err(|e| Failure::Permanent(format!("{to:?}: {e}")))?);
    }
    let msg = b
        .body(job.body.clone())
        .map_err(|e| Failure::Permanent(e.to_string()))?;
    match transport.send(msg).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_permanent() => Err(Failure::Permanent(e.to_string())),
        Err(e) => Err(Failure::Transient(e.to_string())),
    }
}

/// The sending side of `email.max_per_minute`: a sliding minute of sends.
#[derive(Debug, Default)]
struct RateLimit(VecDeque<Instant>);

impl RateLimit {
    /// When the next email may go (now if there is room).
    fn next_slot(&mut self, per_minute: u32) -> Option<Instant> {
        while self.0.front().is_some_and(|t| t.elapsed() >= Duration::from_secs(60)) {
            self.0.pop_front();
        }
        (self.0.len() >= per_minute as usize)
            .then(|| self.0.front().map(|t| *t + Duration::from_secs(60)))
            .flatten()
    }
}

/// Sends queued emails until the cloud stops.
pub async fn run(state: Arc<AppState>) {
    let cfg = state.cfg.email.clone();
    if cfg.smtp_url.is_empty() {
        return;
    }
    let transport = match AsyncSmtpTransport::<Tokio1Executor>::from_url(&cfg.smtp_url) {
        Ok(b) => b.timeout(Some(cfg.timeout)).build(),
        Err(e) => {
            warn!(error = %e, "email.smtp_url is not usable; alarm emails stay queued");
            return;
        }
    };
    let limit = Arc::new(tokio::sync::Mutex::new(RateLimit::default()));
    let st = state.clone();
    let deliver = move |job: EmailJob| {
        let (transport, limit, st, from) = (transport.clone(), limit.clone(), st.clone(), cfg.from.clone());
        let per_minute = cfg.max_per_minute;
        async move {
            let mut limit = limit.lock().await;
            if let Some(at) = limit.next_slot(per_minute) {
                st.metrics.emails.get_or_create(&outcome("rate_limited")).inc();
                tokio::time::sleep_until(at).await;
            }
            let r = send(&transport, &from, &job).await;
            limit.0.push_back(Instant::now());
            match r {
                Ok(()) => Outcome::Delivered,
                Err(Failure::Permanent(why)) => Outcome::Refused(why),
                Err(Failure::Transient(why)) => Outcome::Failed(why),
            }
        }
    };
    let m = state.clone();
    let on = move |job: &EmailJob, e: Event<'_>| match e {
        Event::Delivered => {
            m.metrics.emails.get_or_create(&outcome("sent")).inc();
            debug!(to = ?job.to, "alarm email sent");
        }
        Event::Dropped(why) | Event::GaveUp(why) => {
            m.metrics.emails.get_or_create(&outcome("dropped")).inc();
            warn!(user = %job.user, %why, attempts = job.attempts + 1, "alarm email dropped");
        }
        Event::Retrying(why, backoff) => {
            m.metrics.emails.get_or_create(&outcome("failed")).inc();
            warn!(%why, retry_in_ms = backoff.as_millis() as u64, "alarm email failed; will retry");
        }
    };
    crate::jobs::work(state.clone(), queue(&state), &state.email_wake, deliver, on).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_subject_stays_one_line() {
        let s = super::one_line("[Twinlake] major raised: r on a\r\nBcc: x@y.z");
        assert!(!s.contains('\r') && !s.contains('\n'), "{s}");
        assert_eq!(super::one_line(&"x".repeat(500)).len(), 200);
    }
}
