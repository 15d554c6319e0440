//! Names that many rows share (tables, users, devices), held once: a row's copy of one is
//! a reference count, not an allocation.
//!
//! The names come from devices, so the set is bounded: when it is full it starts again
//! empty, and each such reset is counted (`names_evicted`: the names dropped). Names held
//! elsewhere stay valid; only their sharing is lost.

use std::collections::HashSet;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

/// A bounded set of shared names.
#[derive(Debug)]
pub struct Names {
    set: HashSet<Arc<str>>,
    /// The names asked for last, looked at before hashing: the rows of one read share
    /// their table, user and device.
    recent: [Option<Arc<str>>; RECENT],
    next: usize,
    max: usize,
    evicted: Counter,
}

/// How many names asked for last are kept at hand.
const RECENT: usize = 4;

impl Names {
    /// Holds at most `max` names; evictions count in `evicted`.
    pub fn new(max: usize, evicted: Counter) -> Self {
        Self {
            set: HashSet::new(),
            recent: Default::default(),
            next: 0,
            max: max.max(1),
            evicted,
        }
    }

    /// The shared copy of `name`.
    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.recent.iter().flatten().find(|n| ***n == *name) {
            return n.clone();
        }
        let n = self.shared(name);
        if let Some(slot) = self.recent.get_mut(self.next) {
            *slot = Some(n.clone());
        }
        self.next = (self.next + 1) % RECENT;
        n
    }

    fn shared(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.set.get(name) {
            return n.clone();
        }
        if self.set.len() >= self.max {
            self.evicted.inc_by(self.set.len() as u64);
            self.set.clear();
            self.recent = Default::default();
        }
        let n: Arc<str> = Arc::from(name);
        self.set.insert(n.clone());
        n
    }

    /// How many names it holds.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shared_and_bounded() {
        let evicted = Counter::default();
        let mut names = Names::new(3, evicted.clone());
        let a = names.get("a");
        assert!(Arc::ptr_eq(&a, &names.get("a")), "one copy");
        for n in ["b", "c", "d"] {
            names.get(n);
        }
        assert_eq!(names.len(), 1, "full at three: started again with d");
        assert_eq!(evicted.get(), 3);
        assert_eq!(&*a, "a", "a name held elsewhere stays valid");
        assert!(!Arc::ptr_eq(&a, &names.get("a")));
    }
}
