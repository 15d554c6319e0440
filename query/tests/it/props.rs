//! Generated SQL against the engine (#13, finding 12): every query answers or errors, and
//! none panics, whatever intervals, ranges, bounds and functions it combines. The cases
//! that panicked before: gap filling with a huge interval (a stride that wrapped to 0), and
//! bucket arithmetic far from the origin.

use proptest::prelude::*;

use crate::support::standard;

fn interval() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u64..1_000).prop_map(|n| format!("{n} seconds")),
        (1u64..100).prop_map(|n| format!("{n} minutes")),
        Just("0 seconds".to_owned()),
        Just("-1 minutes".to_owned()),
        Just("1 month".to_owned()),
        Just("106751 days".to_owned()),
        Just("213503982 days 28909551616 microseconds".to_owned()),
        Just("2147483647 days".to_owned()),
        (1u64..u64::MAX).prop_map(|n| format!("{n} nanoseconds")),
    ]
}

fn time() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("'2024-01-01T00:00:00Z'".to_owned()),
        Just("'2024-01-01T00:05:00Z'".to_owned()),
        Just("'1677-09-21T00:12:44Z'".to_owned()),
        Just("'2262-04-11T23:47:16Z'".to_owned()),
        Just("'0001-01-01T00:00:00Z'".to_owned()),
        Just("'9999-12-31T23:59:59Z'".to_owned()),
        (-1_000_000_000_000i64..1_000_000_000_000).prop_map(|s| format!("to_timestamp({s})")),
    ]
}

fn fill() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("avg(temp)"),
        Just("locf(avg(temp))"),
        Just("interpolate(max(hum))"),
        Just("count(*)")
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        (interval(), time(), time(), fill(), any::<bool>()).prop_map(|(i, lo, hi, f, origin)| {
            let origin = if origin { ", '1970-01-01T00:00:00Z'" } else { "" };
            format!(
                "SELECT date_bin_gapfill(interval '{i}', time{origin}) AS t, device, {f} AS v FROM climate \
                 WHERE time >= {lo} AND time < {hi} GROUP BY t, device ORDER BY device, t"
            )
        }),
        (interval(), time()).prop_map(|(i, t)| format!(
            "SELECT time_bucket(interval '{i}', time) AS t, first(temp, time), last(temp, time) FROM climate \
             WHERE time > {t} GROUP BY t"
        )),
        (interval(), time()).prop_map(|(i, t)| format!("SELECT date_bin(interval '{i}', {t}) AS b")),
        "[a-z_.\\[\\]'\"0-9]{0,20}"
            .prop_map(|p| format!("SELECT json_get_str(reported, '{}') FROM twins", p.replace('\'', "''"))),
    ]
}

/// Runs `q` on a runtime of its own; Err if the query panicked.
fn run(q: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = rt.block_on(async {
        let f = standard().await;
        let engine = f.engine.clone();
        let sql = q.to_owned();
        // A panic inside the query would end this task with a JoinError.
        let r = tokio::spawn(async move { engine.collect(&sql).await.map(|_| ()) }).await;
        drop(f);
        r
    });
    match outcome {
        Err(e) if e.is_panic() => Err(format!("{q} panicked: {e}")),
        _ => Ok(()),
    }
}

/// Found by the property below (2026-11-30): buckets from before 1970 to the end of
/// nanosecond time, whose offset from the first bucket passes i64 though each bucket fits.
#[test]
fn gap_filling_to_the_end_of_time_from_before_1970_does_not_overflow() {
    let q = "SELECT date_bin_gapfill(interval '4649798088029 nanoseconds', time) AS t, device, avg(temp) AS v \
             FROM climate WHERE time >= to_timestamp(-4650) AND time < '2262-04-11T23:47:16Z' \
             GROUP BY t, device ORDER BY device, t";
    run(q).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_queries_answer_or_error_and_never_panic(q in query()) {
        prop_assert_eq!(run(&q), Ok(()));
    }
}
