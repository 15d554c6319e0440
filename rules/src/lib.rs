//! Twinlake rules and alarms, the same definitions in the cloud and (later) on gateways.
//!
//! * [`model`]: what a rule is (threshold, deadman, twin, scheduled SQL), its actions, and
//!   the checks a definition passes before it is stored ([`Rule::check`]).
//! * [`eval`]: sans-IO evaluators. They take values with their own timestamps (event time)
//!   and the clock as arguments, and answer with [`eval::Transition`]s; storing alarms and
//!   running actions is the caller's.
//! * [`alarm`]: an alarm's lifecycle (active → acknowledged → cleared), one per
//!   (rule, device) at a time with a count of repeats.

pub mod alarm;
pub mod eval;
pub mod model;

pub use alarm::{Alarm, AlarmState};
pub use eval::{Evaluator, Transition};
pub use model::{Action, Comparison, Condition, Rule, RuleKind, Selector, Severity, scope};

/// What a rule definition or an alarm operation got wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{0}")]
    Invalid(String),
    #[error("the alarm is {0}; {1}")]
    State(&'static str, &'static str),
}
