//! Per-partition aggregates: pure, mergeable, order-independent.
//!
//! An [`Aggregate`] is a function of the multiset of records applied to it (and the
//! horizon): applying records in any order, in any batch split, or merging partial
//! aggregates gives the same value. The per-minute buckets are bounded by the
//! horizon: a minute more than `horizon_minutes` before the latest minute seen is
//! folded into `older_than_horizon`. Because "latest minute seen" is itself a
//! function of the multiset, the roll-up keeps that property.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{LoginEvent, Outcome};
use tally_state as state;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Records written to the processed topic.
    pub processed: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Valid records dropped by the configured filters.
    pub filtered: u64,
    /// Breakdowns of the processed records.
    pub by_device_type: BTreeMap<String, u64>,
    pub by_app_version: BTreeMap<String, u64>,
    pub by_locale: BTreeMap<String, u64>,
    /// Processed records per minute of event time (key: minute start, epoch seconds).
    pub per_minute: BTreeMap<i64, u64>,
    /// Processed records whose minute fell out of the horizon.
    pub older_than_horizon: u64,
}

impl state::Versioned for Aggregate {
    const VERSION: u32 = 1;
}

/// How many minutes of per-minute traffic are kept in detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    pub minutes: i64,
}

impl Default for Horizon {
    fn default() -> Self {
        Horizon { minutes: 24 * 60 }
    }
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    if n == 0 {
        return;
    }
    match map.get_mut(key) {
        Some(v) => *v += n,
        None => {
            map.insert(key.to_string(), n);
        }
    }
}

impl Aggregate {
    pub fn total(&self) -> u64 {
        self.processed + self.dead_lettered + self.filtered
    }

    /// Accounts one record's outcome.
    pub fn apply(&mut self, outcome: &Outcome, horizon: Horizon) {
        match outcome {
            Outcome::Processed { event, .. } => self.apply_processed(event, horizon),
            Outcome::Filtered { .. } => self.filtered += 1,
            Outcome::DeadLetter { .. } => self.dead_lettered += 1,
        }
    }

    fn apply_processed(&mut self, e: &LoginEvent, horizon: Horizon) {
        self.processed += 1;
        bump(&mut self.by_device_type, &e.device_type, 1);
        bump(&mut self.by_app_version, &e.app_version.to_string(), 1);
        bump(&mut self.by_locale, &e.locale, 1);
        *self
            .per_minute
            .entry(e.timestamp.div_euclid(60) * 60)
            .or_default() += 1;
        self.roll_up(horizon);
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Aggregate, horizon: Horizon) {
        self.processed += other.processed;
        self.dead_lettered += other.dead_lettered;
        self.filtered += other.filtered;
        for (mine, theirs) in [
            (&mut self.by_device_type, &other.by_device_type),
            (&mut self.by_app_version, &other.by_app_version),
            (&mut self.by_locale, &other.by_locale),
        ] {
            for (k, v) in theirs {
                bump(mine, k, *v);
            }
        }
        for (m, v) in &other.per_minute {
            *self.per_minute.entry(*m).or_default() += v;
        }
        self.older_than_horizon += other.older_than_horizon;
        self.roll_up(horizon);
    }

    fn roll_up(&mut self, horizon: Horizon) {
        let Some((&latest, _)) = self.per_minute.last_key_value() else {
            return;
        };
        let keep_from = latest - horizon.minutes * 60;
        let kept = self.per_minute.split_off(&keep_from);
        self.older_than_horizon += self.per_minute.values().sum::<u64>();
        self.per_minute = kept;
    }

    /// The busiest minutes, busiest first (ties: earlier minute first).
    pub fn peak_minutes(&self, n: usize) -> Vec<(i64, u64)> {
        let mut v: Vec<(i64, u64)> = self.per_minute.iter().map(|(m, c)| (*m, *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Filters, Limits, ProcessConfig, process};
    use crate::model::InputRecord;
    use proptest::prelude::*;

    fn outcome(kind: u8, device: u8, minute: i64) -> Outcome {
        let device_type = ["android", "iOS"][device as usize % 2];
        let locale = ["en_US", "de_DE", "fr_FR"][device as usize % 3];
        let value = match kind % 4 {
            0 => None,
            _ => Some(
                serde_json::json!({
                    "user_id": "u", "app_version": format!("1.{}", device % 3),
                    "device_type": device_type,
                    "ip": "10.0.0.1", "locale": locale,
                    "device_id": "d", "timestamp": 1_700_000_000 + minute * 60 + 7,
                })
                .to_string()
                .into_bytes(),
            ),
        };
        let cfg = ProcessConfig {
            input_topic: "t".into(),
            limits: Limits::default(),
            filters: Filters {
                min_app_version: Some("1.1".parse().unwrap()),
                allowed_device_types: None,
            },
            output_limits: crate::event::OutputLimits::default(),
        };
        let rec = InputRecord {
            partition: 0,
            offset: 0,
            key: None,
            value,
            timestamp_ms: None,
        };
        process(&rec, &cfg)
    }

    fn arb_outcomes() -> impl Strategy<Value = Vec<Outcome>> {
        proptest::collection::vec((any::<u8>(), any::<u8>(), 0..200i64), 0..60)
            .prop_map(|v| v.into_iter().map(|(k, d, m)| outcome(k, d, m)).collect())
    }

    fn fold(outcomes: &[Outcome], h: Horizon) -> Aggregate {
        let mut a = Aggregate::default();
        for o in outcomes {
            a.apply(o, h);
        }
        a
    }

    #[test]
    fn rolls_up_old_minutes() {
        let h = Horizon { minutes: 10 };
        let a = fold(
            &[
                outcome(1, 0, 0),
                outcome(1, 0, 5),
                outcome(1, 0, 20),
                outcome(1, 0, 20),
            ],
            h,
        );
        assert_eq!(a.processed, 0, "app 1.0 is filtered");
        let a = fold(
            &[
                outcome(1, 1, 0),
                outcome(1, 1, 5),
                outcome(1, 1, 20),
                outcome(1, 1, 20),
            ],
            h,
        );
        assert_eq!(a.processed, 4);
        assert_eq!(a.older_than_horizon, 2);
        assert_eq!(a.per_minute.values().sum::<u64>(), 2);
        assert_eq!(a.peak_minutes(1)[0].1, 2);
    }

    proptest! {
        #[test]
        fn any_split_and_order_gives_the_same_aggregate(
            outcomes in arb_outcomes(), split in any::<prop::sample::Index>(),
            seed in any::<u64>(), horizon in 1..100i64,
        ) {
            let h = Horizon { minutes: horizon };
            let whole = fold(&outcomes, h);
            let at = split.index(outcomes.len() + 1);
            let mut left = fold(&outcomes[..at], h);
            let right = fold(&outcomes[at..], h);
            left.merge(&right, h);
            prop_assert_eq!(&left, &whole);
            let mut shuffled = outcomes.clone();
            let n = shuffled.len();
            if n > 1 {
                for i in 0..n {
                    let j = (seed.wrapping_mul(i as u64 + 1).wrapping_add(17) % n as u64) as usize;
                    shuffled.swap(i, j);
                }
            }
            prop_assert_eq!(&fold(&shuffled, h), &whole);
            let mut other_way = right.clone();
            other_way.merge(&fold(&outcomes[..at], h), h);
            prop_assert_eq!(&other_way, &whole);
            prop_assert_eq!(whole.total(), outcomes.len() as u64);
        }
    }
}
