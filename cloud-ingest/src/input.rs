//! What API clients send in bodies and messages, read by pure functions: no server state,
//! no I/O, only `serde`, `serde_json` and `humantime-serde`. The fuzz crate compiles this file on
//! its own (`fuzz/fuzz_targets/sql_body.rs`, `stream_command.rs`), so keep it that way.

use std::time::Duration;

use humantime_serde::re::humantime;
use serde::Deserialize;

/// The shortest stream interval a client may ask for.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The longest stream interval a client may ask for.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The largest stream command a client may send over a stream WebSocket, in bytes.
pub const MAX_COMMAND_BYTES: usize = 64 << 10;

/// A stream interval within [`MIN_INTERVAL`] and [`MAX_INTERVAL`].
pub fn check_interval(d: Duration) -> Result<Duration, String> {
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
        return Err(format!("interval: from 100ms to {}s", MAX_INTERVAL.as_secs()));
    }
    Ok(d)
}

/// An `?interval=` value: whole seconds (`5`) or a humantime duration (`500ms`, `1m`).
pub fn interval_param(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("interval {s:?}: {e}"))?,
    };
    check_interval(d)
}

/// `POST /v1/sql` parameters (query string or JSON body).
#[derive(Debug, Default, Deserialize)]
pub struct SqlParams {
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
}

/// One SQL request: the statement and the format it asked for, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct SqlRequest {
    pub sql: String,
    pub format: Option<String>,
}

/// The request a `POST /v1/sql` makes: the body as `{"sql": …, "format": …}` when it is
/// JSON, else the body is the SQL (lossy UTF-8); what the body lacks comes from the query
/// string. A request with no SQL, or only blanks, is an error.
pub fn sql_request(body_is_json: bool, body: &[u8], query: SqlParams) -> Result<SqlRequest, String> {
    let from_body: SqlParams = if body_is_json {
        serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?
    } else {
        SqlParams {
            sql: (!body.is_empty()).then(|| String::from_utf8_lossy(body).into_owned()),
            format: None,
        }
    };
    let sql = from_body
        .sql
        .or(query.sql)
        .filter(|s| !s.trim().is_empty())
        .ok_or("no SQL: send it as the body or as {\"sql\": …}")?;
    Ok(SqlRequest {
        sql,
        format: from_body.format.or(query.format),
    })
}

/// A command on the Thinger stream WebSocket.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamCommand {
    /// `{"resource": r, "interval": seconds, "enabled": true}`: at most one value per
    /// interval (none: the server's default).
    Subscribe {
        resource: String,
        interval: Option<Duration>,
    },
    /// `{"resource": r, "enabled": false}`.
    Unsubscribe { resource: String },
}

/// Why a stream command was refused, and the resource it named (empty if none).
#[derive(Debug, PartialEq, Eq)]
pub struct CommandError {
    pub resource: Option<String>,
    pub message: String,
}

/// Reads one stream WebSocket command.
pub fn stream_command(text: &str) -> Result<StreamCommand, CommandError> {
    if text.len() > MAX_COMMAND_BYTES {
        return Err(CommandError {
            resource: None,
            message: format!("a command is at most {MAX_COMMAND_BYTES} bytes"),
        });
    }
    let cmd: serde_json::Value = serde_json::from_str(text).map_err(|e| CommandError {
        resource: None,
        message: format!("not JSON: {e}"),
    })?;
    let resource = cmd.get("resource").and_then(|r| r.as_str()).unwrap_or("").to_owned();
    let enabled = cmd.get("enabled").and_then(serde_json::Value::as_bool).unwrap_or(true);
    let interval = match ws_interval(&cmd) {
        Ok(i) => i,
        Err(message) => {
            return Err(CommandError {
                resource: Some(resource),
                message,
            });
        }
    };
    if resource.is_empty() {
        return Err(CommandError {
            resource: None,
            message: "send {\"resource\": name, \"interval\": seconds, \"enabled\": true}".into(),
        });
    }
    Ok(if enabled {
        StreamCommand::Subscribe { resource, interval }
    } else {
        StreamCommand::Unsubscribe { resource }
    })
}

/// A WebSocket command's interval in seconds (absent, 0 or less: none).
fn ws_interval(cmd: &serde_json::Value) -> Result<Option<Duration>, String> {
    match cmd.get("interval").and_then(serde_json::Value::as_f64) {
        None => Ok(None),
        Some(s) if s <= 0.0 => Ok(None),
        Some(s) => Duration::try_from_secs_f64(s.max(0.1))
            .map_err(|_| format!("interval {s}: not a duration"))
            .and_then(check_interval)
            .map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Intervals that used to panic (`Duration::from_secs_f64`, an `Instant` overflow) are
    /// refused with a message now (#13, finding 12).
    #[test]
    fn intervals_from_clients_are_bounded() {
        for q in ["18446744073709551615", "100000000000000s", "10ms"] {
            assert!(interval_param(q).is_err(), "{q}");
        }
        assert_eq!(interval_param("5").unwrap(), Duration::from_secs(5));
        for v in ["1e300", "1.7976931348623157e308", "1e20"] {
            let e = stream_command(&format!(r#"{{"resource":"t","interval":{v}}}"#)).unwrap_err();
            assert_eq!(e.resource.as_deref(), Some("t"), "{v}");
        }
        let sub = |text: &str| match stream_command(text).unwrap() {
            StreamCommand::Subscribe { interval, .. } => interval,
            other => panic!("{other:?}"),
        };
        assert_eq!(sub(r#"{"resource":"t","interval":-1}"#), None);
        assert_eq!(
            sub(r#"{"resource":"t","interval":0.5}"#),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            stream_command(r#"{"resource":"t","enabled":false}"#).unwrap(),
            StreamCommand::Unsubscribe { resource: "t".into() }
        );
        assert!(stream_command(&" ".repeat(MAX_COMMAND_BYTES + 1)).is_err());
    }

    #[test]
    fn sql_comes_from_the_body_or_the_query() {
        let q = || SqlParams {
            sql: Some("select 2".into()),
            format: Some("csv".into()),
        };
        let r = sql_request(true, br#"{"sql":"select 1"}"#, q()).unwrap();
        assert_eq!((r.sql.as_str(), r.format.as_deref()), ("select 1", Some("csv")));
        assert_eq!(sql_request(false, b"", q()).unwrap().sql, "select 2");
        assert!(sql_request(false, b"  ", SqlParams::default()).is_err());
        assert!(sql_request(true, b"{", q()).is_err());
    }
}
