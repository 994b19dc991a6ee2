//! Per-partition aggregates: pure, mergeable, order-independent.
//!
//! An [`Aggregate`] is a function of the multiset of records applied to it (and the
//! horizon): applying records in any order, in any batch split, or merging partial
//! aggregates gives the same value. The per-minute buckets are bounded by the
//! horizon: a minute more than `horizon_minutes` before the latest minute seen is
//! folded into `older_than_horizon`. Because "latest minute seen" is itself a
//! function of the multiset, the roll-up keeps that property.
//!
//! The device-type, app-version and locale breakdowns are bounded the same way:
//! each keeps at most `top_k` values and folds the rest into [`OTHER`]. Which
//! values are kept is decided by the values alone (see [`cap`]), never by counts
//! or arrival order, so the bound keeps the aggregate mergeable.

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
    /// Input records that could not be counted at all: deleted by retention before
    /// a restore could read them, skipped only under `--allow-inexact-restore`.
    /// Non-zero means the other figures are a lower bound.
    #[serde(default)]
    pub uncounted: u64,
}

/// 2: `uncounted` was added.
impl state::Versioned for Aggregate {
    const VERSION: u32 = 2;
}

/// How much detail an aggregate keeps: minutes of per-minute traffic, and values
/// per breakdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    pub minutes: i64,
    /// Values kept per breakdown (device type, app version, locale); the rest are
    /// counted under [`OTHER`].
    pub top_k: usize,
}

impl Default for Horizon {
    fn default() -> Self {
        Horizon {
            minutes: 24 * 60,
            top_k: 1000,
        }
    }
}

/// The breakdown key that counts every value past the first `top_k`. Empty: no
/// real value can be empty (validation rejects blank fields), so it never
/// collides with one.
pub const OTHER: &str = "";

/// Shortlex order (shorter first, then bytewise): the order in which breakdown
/// values earn a place. Short canonical values ("iOS", "en_US", "2.3.0") come
/// before long junk, so a flood of garbage values folds into `other` instead of
/// pushing the real ones out.
fn shortlex(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Keeps the `k` shortlex-smallest values of `map`, folding the others' counts into
/// [`OTHER`].
///
/// Why membership by the values' order and not by count ("top K by count"): a
/// count-based cut applied after each record or merge depends on what has been
/// seen so far, so two batch splits of the same records could keep different
/// values and disagree forever. With a fixed total order on values, the kept set
/// is always "the `k` smallest distinct values seen": a value among the `k`
/// smallest of the whole multiset is among the `k` smallest of every part of it,
/// so it is never folded anywhere and its count stays exact; every other value is
/// folded at the latest when the parts are merged. Any split, order or merge tree
/// therefore gives the same aggregate (the property tests check it).
fn cap(map: &mut BTreeMap<String, u64>, k: usize) {
    let real = map.len() - usize::from(map.contains_key(OTHER));
    if real <= k {
        return;
    }
    let mut keys: Vec<&String> = map.keys().filter(|v| v.as_str() != OTHER).collect();
    keys.sort_by(|a, b| shortlex(a, b));
    let folded: Vec<String> = keys[k..].iter().map(|v| (*v).clone()).collect();
    let mut other = 0;
    for v in folded {
        other += map.remove(&v).unwrap_or(0);
    }
    *map.entry(OTHER.to_string()).or_default() += other;
}

/// Values longer than this are counted under [`OTHER`] at once: with fewer than
/// `top_k` distinct values, a few 200 KiB device types would otherwise be kept and
/// could outgrow the insights topic's record limit. A rule on the value alone, so
/// order independence is kept.
pub const MAX_VALUE_BYTES: usize = 256;

/// Counts one value into a capped breakdown: O(k) when the value is new and the
/// breakdown is full, O(log k) otherwise.
fn bump_capped(map: &mut BTreeMap<String, u64>, key: &str, k: usize) {
    let key = if key.len() > MAX_VALUE_BYTES {
        OTHER
    } else {
        key
    };
    // A value already counted is the case of nearly every record: one lookup.
    if let Some(n) = map.get_mut(key) {
        *n += 1;
        return;
    }
    if key == OTHER || map.len() - usize::from(map.contains_key(OTHER)) < k {
        map.insert(key.to_string(), 1);
        return;
    }
    let largest = map
        .keys()
        .filter(|v| v.as_str() != OTHER)
        .max_by(|a, b| shortlex(a, b))
        .cloned();
    match largest {
        Some(l) if shortlex(key, &l).is_lt() => {
            let n = map.remove(&l).unwrap_or(0);
            bump(map, OTHER, n);
            bump(map, key, 1);
        }
        _ => bump(map, OTHER, 1),
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
        let k = horizon.top_k;
        bump_capped(&mut self.by_device_type, &e.device_type, k);
        bump_capped(&mut self.by_app_version, e.app_version.as_str(), k);
        bump_capped(&mut self.by_locale, &e.locale, k);
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
            cap(mine, horizon.top_k);
        }
        for (m, v) in &other.per_minute {
            *self.per_minute.entry(*m).or_default() += v;
        }
        self.older_than_horizon += other.older_than_horizon;
        self.uncounted += other.uncounted;
        self.roll_up(horizon);
    }

    fn roll_up(&mut self, horizon: Horizon) {
        let Some((&latest, _)) = self.per_minute.last_key_value() else {
            return;
        };
        let keep_from = latest - horizon.minutes * 60;
        // The common case, checked first: `split_off` would move every bucket.
        if self
            .per_minute
            .first_key_value()
            .is_some_and(|(&first, _)| first >= keep_from)
        {
            return;
        }
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
        // Enough distinct values that small `top_k`s fold some of them.
        let long = "d".repeat(MAX_VALUE_BYTES + 1);
        let device_type = ["android", "iOS", "web", "tv", long.as_str()][device as usize % 5];
        let locale = ["en_US", "de_DE", "fr_FR", "x", "yy_ZZZ"][device as usize % 5];
        let value = match kind % 4 {
            0 => None,
            _ => Some(
                serde_json::json!({
                    "user_id": "u", "app_version": format!("1.{}", device % 7),
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
        let h = Horizon {
            minutes: 10,
            ..Horizon::default()
        };
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
            seed in any::<u64>(), horizon in 1..100i64, top_k in 1..8usize,
        ) {
            let h = Horizon { minutes: horizon, top_k };
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
            // A merge tree of single records, merged right to left, too.
            let mut tree = Aggregate::default();
            for o in outcomes.iter().rev() {
                tree.merge(&fold(std::slice::from_ref(o), h), h);
            }
            prop_assert_eq!(&tree, &whole);
        }

        #[test]
        fn breakdowns_keep_exactly_the_k_shortlex_smallest_values(
            outcomes in arb_outcomes(), top_k in 1..8usize,
        ) {
            let capped = fold(&outcomes, Horizon { minutes: 1000, top_k });
            let exact = fold(&outcomes, Horizon { minutes: 1000, top_k: usize::MAX });
            for (got, all) in [
                (&capped.by_device_type, &exact.by_device_type),
                (&capped.by_app_version, &exact.by_app_version),
                (&capped.by_locale, &exact.by_locale),
            ] {
                // Over-long values are "other" whatever the cap.
                let mut values: Vec<&String> = all.keys().filter(|v| v.as_str() != OTHER).collect();
                values.sort_by(|a, b| shortlex(a, b));
                let kept: BTreeMap<String, u64> = values
                    .iter()
                    .take(top_k)
                    .map(|v| ((*v).clone(), all[*v]))
                    .collect();
                let folded: u64 = values.iter().skip(top_k).map(|v| all[*v]).sum::<u64>()
                    + all.get(OTHER).copied().unwrap_or(0);
                let mut want = kept;
                if folded > 0 {
                    want.insert(OTHER.to_string(), folded);
                }
                prop_assert_eq!(got, &want);
                prop_assert_eq!(got.values().sum::<u64>(), capped.processed);
            }
        }
    }
}
