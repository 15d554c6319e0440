use proptest::prelude::*;

use super::*;
use crate::Comparison;

const ABOVE_35: Condition = Condition {
    op: Comparison::Gt,
    value: 35.0,
};
const BELOW_33: Condition = Condition {
    op: Comparison::Lt,
    value: 33.0,
};

fn run(e: &mut Evaluator, for_ms: u64, values: &[(u64, f64)]) -> Vec<Transition> {
    values
        .iter()
        .filter_map(|&(at, v)| e.threshold("u/r", "d", (&ABOVE_35, Some(&BELOW_33)), for_ms, at, v))
        .collect()
}

#[test]
fn a_threshold_with_for_and_hysteresis_raises_once_and_clears_once() {
    let mut e = Evaluator::default();
    // Over 35 from t=10 s; 30 s later it raises; dipping to 34 does not clear (hysteresis);
    // 32 does.
    let values = [
        (0, 30.0),
        (10_000, 36.0),
        (20_000, 37.0),
        (30_000, 36.5),
        (40_000, 38.0),
        (50_000, 34.0),
        (60_000, 39.0),
        (70_000, 32.0),
        (80_000, 33.5),
    ];
    let t = run(&mut e, 30_000, &values);
    assert_eq!(t.len(), 2, "{t:?}");
    assert!(
        matches!(
            t[0],
            Transition::Raise {
                at: 40_000,
                value: Some(38.0),
                ..
            }
        ),
        "{t:?}"
    );
    assert!(matches!(t[1], Transition::Clear { at: 70_000, .. }), "{t:?}");
    assert!(e.is_empty(), "a cleared key keeps no state");
}

#[test]
fn a_dip_before_for_elapses_starts_over() {
    let mut e = Evaluator::default();
    let t = run(
        &mut e,
        30_000,
        &[(0, 36.0), (20_000, 34.0), (30_000, 36.0), (50_000, 36.0)],
    );
    assert!(t.is_empty(), "{t:?}");
    let t = run(&mut e, 30_000, &[(60_000, 36.0)]);
    assert!(matches!(t[..], [Transition::Raise { at: 60_000, .. }]), "{t:?}");
}

#[test]
fn late_values_are_judged_at_their_own_time_and_older_ones_ignored() {
    let mut e = Evaluator::default();
    // After an outage, a backlog arrives at once: its timestamps decide.
    let t = run(&mut e, 30_000, &[(1_000, 36.0), (11_000, 36.0)]);
    assert!(t.is_empty());
    assert!(
        run(&mut e, 30_000, &[(5_000, 10.0)]).is_empty(),
        "an older value is ignored"
    );
    let t = run(&mut e, 30_000, &[(31_000, 36.0)]);
    assert_eq!(t.len(), 1);
}

#[test]
fn a_deadman_raises_after_silence_only_with_its_gateway_up_and_clears_on_a_row() {
    let mut e = Evaluator::default();
    e.watch("u/dm", "d", 1_000);
    assert!(e.silent("u/dm", "d", 50_000, 60_000, true).is_none());
    assert!(e.silent("u/dm", "d", 70_000, 60_000, false).is_none(), "gateway down");
    let t = e.silent("u/dm", "d", 70_000, 60_000, true).unwrap();
    assert!(matches!(t, Transition::Raise { at: 61_000, .. }), "{t:?}");
    assert!(e.silent("u/dm", "d", 80_000, 60_000, true).is_none(), "raised once");
    let t = e.seen("u/dm", "d", 85_000).unwrap();
    assert!(matches!(t, Transition::Clear { at: 85_000, .. }));
    assert!(e.silent("u/dm", "d", 100_000, 60_000, true).is_none());
    assert!(e.silent("u/dm", "d", 145_000, 60_000, true).is_some());
}

#[test]
fn silences_covers_every_watched_and_seen_key_once() {
    let mut e = Evaluator::default();
    e.watch("u/dm", "listed", 1_000);
    assert!(e.seen("u/dm", "seen", 5_000).is_none(), "a first row raises nothing");
    assert!(e.silences("u/dm", 30_000, 60_000).is_empty());
    let mut keys: Vec<String> = e
        .silences("u/dm", 66_000, 60_000)
        .into_iter()
        .map(|t| t.key().to_owned())
        .collect();
    keys.sort();
    assert_eq!(keys, ["listed", "seen"]);
    assert!(e.silences("u/dm", 90_000, 60_000).is_empty(), "raised once each");
    assert!(e.silences("u/other", 90_000, 60_000).is_empty());
}

#[test]
fn a_held_condition_raises_after_its_duration_and_clears_when_it_ends() {
    let mut e = Evaluator::default();
    assert!(
        e.holding("u/tw", "d", Some(1_000), 5_000, 10_000, "out of sync")
            .is_none()
    );
    let t = e
        .holding("u/tw", "d", Some(1_000), 12_000, 10_000, "out of sync")
        .unwrap();
    assert!(matches!(t, Transition::Raise { at: 11_000, .. }));
    assert!(
        e.holding("u/tw", "d", Some(1_000), 13_000, 10_000, "out of sync")
            .is_none()
    );
    let t = e.holding("u/tw", "d", None, 14_000, 10_000, "out of sync").unwrap();
    assert!(matches!(t, Transition::Clear { at: 14_000, .. }));
    assert!(e.holding("u/tw", "d", None, 15_000, 10_000, "out of sync").is_none());
}

#[test]
fn a_query_raises_per_key_and_clears_keys_it_no_longer_returns() {
    let mut e = Evaluator::default();
    let rows = |ks: &[&str]| ks.iter().map(|k| ((*k).to_owned(), None)).collect::<Vec<_>>();
    let t = e.keyed("u/q", &rows(&["a", "b"]), 1);
    assert_eq!(t.len(), 2);
    assert!(e.keyed("u/q", &rows(&["a", "b"]), 2).is_empty());
    let t = e.keyed("u/q", &rows(&["b", "c"]), 3);
    assert_eq!(t.len(), 2);
    assert!(
        t.iter()
            .any(|t| matches!(t, Transition::Clear { key, .. } if key == "a"))
    );
    assert!(
        t.iter()
            .any(|t| matches!(t, Transition::Raise { key, .. } if key == "c"))
    );
}

#[test]
fn state_is_bounded_and_refusals_counted() {
    let mut e = Evaluator::new(2);
    for d in ["a", "b", "c"] {
        e.watch("u/dm", d, 0);
    }
    assert_eq!((e.len(), e.refused()), (2, 0));
    assert!(e.seen("u/dm", "c", 5).is_none());
    assert_eq!((e.len(), e.refused()), (2, 1));
    e.forget("u/dm");
    assert!(e.is_empty());
}

#[test]
fn restored_and_reset_alarms() {
    let mut e = Evaluator::default();
    e.restore("u/r", "d", 0);
    // Restored active: a value under the clear line clears it.
    let t = e.threshold("u/r", "d", (&ABOVE_35, Some(&BELOW_33)), 0, 5, 20.0);
    assert!(matches!(t, Some(Transition::Clear { .. })));
    // A person cleared it while the condition still holds: it raises again.
    assert!(e.threshold("u/r", "d", (&ABOVE_35, None), 0, 6, 40.0).is_some());
    e.reset("u/r", "d");
    assert!(e.threshold("u/r", "d", (&ABOVE_35, None), 0, 7, 40.0).is_some());
}

proptest! {
    /// Over any series, a threshold's transitions alternate (raise, clear, raise, …), every
    /// raise comes from a value over the line that had been over it for `for` without a
    /// break, and every clear from a value under the clear line.
    #[test]
    fn threshold_transitions_alternate_and_are_justified(
        steps in proptest::collection::vec((0u64..20_000, 20.0f64..45.0), 1..200),
        for_ms in 0u64..60_000,
    ) {
        let mut e = Evaluator::default();
        let mut at = 0;
        let mut raised = false;
        let mut over_since: Option<u64> = None;
        for (dt, v) in steps {
            at += dt;
            if ABOVE_35.holds(v) {
                over_since.get_or_insert(at);
            } else if !raised {
                over_since = None;
            }
            match e.threshold("u/r", "d", (&ABOVE_35, Some(&BELOW_33)), for_ms, at, v) {
                Some(Transition::Raise { at: r, .. }) => {
                    prop_assert!(!raised);
                    prop_assert!(ABOVE_35.holds(v));
                    prop_assert!(r - over_since.unwrap() >= for_ms);
                    raised = true;
                }
                Some(Transition::Clear { .. }) => {
                    prop_assert!(raised);
                    prop_assert!(BELOW_33.holds(v));
                    raised = false;
                    over_since = None;
                }
                None => {
                    if raised {
                        prop_assert!(!BELOW_33.holds(v));
                    } else if let Some(s) = over_since {
                        prop_assert!(!(ABOVE_35.holds(v) && at - s >= for_ms));
                    }
                }
            }
        }
    }
}
