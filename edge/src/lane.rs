//! A shard's lane in the relay link: what waits for the shard to take it, newest per event.
//!
//! The link hands every new cue (and every retirement) to each shard's lane at once and never
//! waits; one task per shard moves the lane's items into that shard's bounded channel, waiting
//! only when that shard is behind. So one slow shard delays no other, and while a shard is
//! behind, a newer cue of an event replaces the older one still waiting in its lane: a
//! superseded cue is never fanned out. Critical cues leave first, then normal ones (and
//! retirements), then background ones; within a class, in the order their events first entered.
//!
//! Bounded: one item per event, at most `cap` events (the link's `relay_cache_events`); at the
//! cap the least urgent event waiting longest is dropped and counted (its devices get its newest
//! cue at their next catch-up). Sans-IO.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use cue_common::cue::{EventName, Priority};

use crate::encoded::EncodedCue;

/// What waits for a shard.
#[derive(Debug, Clone)]
pub enum LaneItem {
    /// The newest cue of its event.
    Cue(Arc<EncodedCue>),
    /// The event was retired (after any cue of it that was waiting).
    Retired(EventName),
}

impl LaneItem {
    fn event(&self) -> &EventName {
        match self {
            LaneItem::Cue(c) => c.cue.event(),
            LaneItem::Retired(e) => e,
        }
    }

    fn class(&self) -> Priority {
        match self {
            LaneItem::Cue(c) => c.class,
            LaneItem::Retired(_) => Priority::Normal,
        }
    }
}

/// One shard's waiting items.
#[derive(Debug)]
pub struct Lane {
    /// Events waiting, per class ([`Priority::ALL`] order), oldest first.
    order: [VecDeque<EventName>; 3],
    items: HashMap<EventName, LaneItem>,
    cap: usize,
    /// Items replaced by a newer one of their event before the shard took them.
    pub conflated: u64,
    /// Items dropped at the cap.
    pub dropped: u64,
}

impl Lane {
    /// An empty lane holding at most `cap` events (`cap` >= 1).
    pub fn new(cap: usize) -> Self {
        Self {
            order: Default::default(),
            items: HashMap::new(),
            cap: cap.max(1),
            conflated: 0,
            dropped: 0,
        }
    }

    /// Queues `item`: it replaces what waits for its event (a cue older than the one waiting is
    /// itself the one replaced), else joins the end.
    pub fn push(&mut self, item: LaneItem) {
        let ev = item.event().clone();
        if let Some(waiting) = self.items.get_mut(&ev) {
            self.conflated += 1;
            let older = matches!((&*waiting, &item), (LaneItem::Cue(w), LaneItem::Cue(n)) if n.cue.seq() <= w.cue.seq());
            if !older {
                *waiting = item;
            }
            return;
        }
        if self.items.len() >= self.cap {
            if let Some(old) = self.order.iter_mut().rev().find_map(|q| q.pop_front()) {
                self.items.remove(&old);
                self.dropped += 1;
            }
        }
        self.order[item.class().index()].push_back(ev.clone());
        self.items.insert(ev, item);
    }

    /// The most urgent item, of the event waiting longest in its class.
    pub fn pop(&mut self) -> Option<LaneItem> {
        self.pop_up_to(Priority::Background)
    }

    /// As [`Lane::pop`], of a class at most as low as `lowest` (the rest keep waiting, and a
    /// newer cue of their event replaces them meanwhile).
    pub fn pop_up_to(&mut self, lowest: Priority) -> Option<LaneItem> {
        loop {
            let ev = self.order[..=lowest.index()]
                .iter_mut()
                .find_map(|q| q.pop_front())?;
            // An event's item keeps the place it took first (its class may have changed since:
            // then it is found in its first class's queue).
            if let Some(item) = self.items.remove(&ev) {
                return Some(item);
            }
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// True when an item of class `class` waits.
    pub fn has(&self, class: Priority) -> bool {
        !self.order[class.index()].is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cue_common::cue::Cue;
    use proptest::prelude::*;

    fn cue(ev: &str, seq: u64) -> LaneItem {
        LaneItem::Cue(Arc::new(EncodedCue::new(
            Cue::new(ev, &format!("k{seq}"), seq, seq).unwrap(),
        )))
    }

    fn seq(i: &LaneItem) -> Option<u64> {
        match i {
            LaneItem::Cue(c) => Some(c.cue.seq()),
            LaneItem::Retired(_) => None,
        }
    }

    #[test]
    fn newest_per_event_in_first_arrival_order() {
        let mut l = Lane::new(16);
        l.push(cue("a", 1));
        l.push(cue("b", 1));
        l.push(cue("a", 3));
        l.push(cue("a", 2)); // older than the one waiting: dropped
        assert_eq!(l.len(), 2);
        assert_eq!(l.conflated, 2);
        assert_eq!(seq(&l.pop().unwrap()), Some(3));
        assert_eq!(seq(&l.pop().unwrap()), Some(1));
        assert!(l.pop().is_none());
        // A retirement replaces the cue waiting; a cue after it replaces the retirement.
        l.push(cue("a", 5));
        l.push(LaneItem::Retired(EventName::new("a").unwrap()));
        assert!(matches!(l.pop(), Some(LaneItem::Retired(_))));
        l.push(LaneItem::Retired(EventName::new("a").unwrap()));
        l.push(cue("a", 9));
        assert_eq!(seq(&l.pop().unwrap()), Some(9));
    }

    fn classed(ev: &str, seq: u64, class: Priority) -> LaneItem {
        let LaneItem::Cue(c) = cue(ev, seq) else {
            unreachable!()
        };
        LaneItem::Cue(Arc::new(
            Arc::try_unwrap(c).expect("one owner").with_class(class),
        ))
    }

    #[test]
    fn critical_first_background_last_and_dropped_first_at_the_cap() {
        let mut l = Lane::new(4);
        l.push(classed("bg", 1, Priority::Background));
        l.push(cue("n1", 1));
        l.push(classed("crit", 1, Priority::Critical));
        l.push(LaneItem::Retired(EventName::new("gone").unwrap()));
        // Full: a new event pushes out the background one, not the older normal ones.
        l.push(cue("n2", 1));
        assert_eq!(l.dropped, 1);
        let order: Vec<String> = std::iter::from_fn(|| l.pop())
            .map(|i| i.event().as_str().to_string())
            .collect();
        assert_eq!(order, ["crit", "n1", "gone", "n2"]);
    }

    #[test]
    fn held_back_background_cues_wait_and_are_conflated() {
        let mut l = Lane::new(16);
        l.push(classed("bg", 1, Priority::Background));
        l.push(cue("n", 1));
        assert_eq!(l.pop_up_to(Priority::Normal).unwrap().event().as_str(), "n");
        assert!(l.pop_up_to(Priority::Normal).is_none());
        assert!(l.has(Priority::Background));
        // Newer background cues replace the one held back; nothing is lost but superseded ones.
        l.push(classed("bg", 2, Priority::Background));
        l.push(classed("bg", 3, Priority::Background));
        assert_eq!(l.conflated, 2);
        assert_eq!(seq(&l.pop().unwrap()), Some(3));
    }

    #[test]
    fn at_the_cap_the_longest_waiting_event_is_dropped() {
        let mut l = Lane::new(2);
        l.push(cue("a", 1));
        l.push(cue("b", 1));
        l.push(cue("c", 1));
        assert_eq!((l.len(), l.dropped), (2, 1));
        assert_eq!(l.pop().unwrap().event().as_str(), "b");
    }

    proptest! {
        /// Whatever arrives: at most one item per event, never more than the cap, and what
        /// leaves for an event is the newest that arrived for it since it last left.
        #[test]
        fn one_item_per_event_and_always_the_newest(
            ops in proptest::collection::vec((0u8..6, 1u64..50, proptest::bool::weighted(0.2)), 1..300),
        ) {
            let mut l = Lane::new(64);
            let mut newest: HashMap<String, u64> = HashMap::new();
            for (e, s, pop) in ops {
                if pop {
                    if let Some(item) = l.pop() {
                        let ev = item.event().as_str().to_string();
                        prop_assert_eq!(seq(&item), newest.remove(&ev));
                    }
                    continue;
                }
                let ev = format!("e{e}");
                l.push(cue(&ev, s));
                let n = newest.entry(ev).or_insert(0);
                *n = (*n).max(s);
                prop_assert!(l.len() <= 6);
            }
            prop_assert_eq!(l.len(), newest.len());
        }
    }
}
