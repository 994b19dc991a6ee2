//! `tally generate`: realistic user-login events, reproducible from a seed, with a
//! configurable share of malformed records of many kinds.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// The malformed kinds the generator mixes in (each lands in the DLQ with its reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Malformed {
    MissingDeviceType,
    InvalidUtf8,
    TruncatedJson,
    NullValue,
    EmptyValue,
    WrongType,
    Huge,
    NegativeTimestamp,
    WordTimestamp,
    FloatTimestamp,
    BadIp,
    NullField,
    NotAnObject,
    FutureTimestamp,
    BadAppVersion,
    /// A junk value of a chosen size (see [`Oversize`]): over the DLQ's limit,
    /// over the broker's default message size, exactly at a limit.
    Oversize,
}

impl Malformed {
    pub const ALL: [Malformed; 15] = [
        Malformed::MissingDeviceType,
        Malformed::InvalidUtf8,
        Malformed::TruncatedJson,
        Malformed::NullValue,
        Malformed::EmptyValue,
        Malformed::WrongType,
        Malformed::Huge,
        Malformed::NegativeTimestamp,
        Malformed::WordTimestamp,
        Malformed::FloatTimestamp,
        Malformed::BadIp,
        Malformed::NullField,
        Malformed::NotAnObject,
        Malformed::FutureTimestamp,
        Malformed::BadAppVersion,
    ];
}

const APP_VERSIONS: [&str; 8] = [
    "2.3.0",
    "2.3.1",
    "2.4.0",
    "2.10.2",
    "3.0.0",
    "3.0.2",
    "3.1.0",
    "3.2.0-beta",
];
const LOCALES: [&str; 8] = [
    "en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "pt_BR", "ja_JP", "hi_IN",
];
const USERS: u64 = 5_000;

/// One generated record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub key: Vec<u8>,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    pub malformed: Option<Malformed>,
}

/// A recount of generated records from the generator's own labels: independent of
/// tally's validation and aggregation, so tests and drills can check tally's
/// insights against it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recount {
    pub total: u64,
    pub malformed: u64,
    pub by_device_type: BTreeMap<String, u64>,
    pub by_app_version: BTreeMap<String, u64>,
    pub by_locale: BTreeMap<String, u64>,
}

impl Recount {
    pub fn valid(&self) -> u64 {
        self.total - self.malformed
    }

    pub fn add(&mut self, r: &Generated) {
        self.total += 1;
        if r.malformed.is_some() {
            self.malformed += 1;
            return;
        }
        let v: Value = serde_json::from_slice(r.value.as_deref().unwrap_or_default())
            .expect("valid records are JSON");
        for (map, field) in [
            (&mut self.by_device_type, "device_type"),
            (&mut self.by_app_version, "app_version"),
            (&mut self.by_locale, "locale"),
        ] {
            *map.entry(v[field].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }

    pub fn merge(&mut self, other: &Recount) {
        self.total += other.total;
        self.malformed += other.malformed;
        for (mine, theirs) in [
            (&mut self.by_device_type, &other.by_device_type),
            (&mut self.by_app_version, &other.by_app_version),
            (&mut self.by_locale, &other.by_locale),
        ] {
            for (k, v) in theirs {
                *mine.entry(k.clone()).or_default() += v;
            }
        }
    }
}

/// Junk records of chosen sizes mixed in at fixed positions: from record
/// `every` on, every `every`-th record starts a run of junk values, the k-th run
/// being `runs[k % runs.len()]` = (size in bytes, records): e.g. one record over
/// the DLQ's limit, or a burst of twenty 1 MiB records. They are rejected as
/// `too_large` (or `invalid_json` below that limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversize {
    pub runs: Vec<(usize, u64)>,
    pub every: u64,
}

impl Oversize {
    /// The size of record `n`, if it is one of the junk records.
    fn size_of(&self, n: u64) -> Option<usize> {
        if self.runs.is_empty() || self.every == 0 || n < self.every {
            return None;
        }
        let (slot, within) = (n / self.every, n % self.every);
        let (len, run) = self.runs[(slot - 1) as usize % self.runs.len()];
        (within < run).then_some(len)
    }
}

/// Parses `SIZE` or `SIZExCOUNT` (e.g. `1048576x20`), as `--oversize` takes it.
pub fn parse_run(s: &str) -> Result<(usize, u64), String> {
    let (size, count) = s.split_once('x').unwrap_or((s, "1"));
    match (size.trim().parse(), count.trim().parse()) {
        (Ok(size), Ok(count)) if count > 0 => Ok((size, count)),
        _ => Err(format!("{s:?} is not SIZE or SIZExCOUNT (e.g. 1048576x20)")),
    }
}

/// A junk value of `len` bytes (letters; never JSON), varying with `n`.
pub fn junk(len: usize, n: u64) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i as u64).wrapping_mul(7).wrapping_add(n) % 26) as u8)
        .collect()
}

#[derive(Debug)]
pub struct Generator {
    rng: ChaCha8Rng,
    seed: u64,
    start_time: i64,
    invalid_ratio: f64,
    kinds: Vec<Malformed>,
    n: u64,
    per_minute: u64,
    oversize: Option<Oversize>,
}

fn uuid_for(seed: u64, salt: u64, id: u64) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ id.wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    uuid::Builder::from_random_bytes(rng.random())
        .into_uuid()
        .to_string()
}

impl Generator {
    pub fn new(seed: u64, start_time: i64, invalid_ratio: f64, huge: bool) -> Self {
        let kinds = Malformed::ALL
            .into_iter()
            .filter(|k| huge || *k != Malformed::Huge)
            .collect();
        Generator {
            rng: ChaCha8Rng::seed_from_u64(seed),
            seed,
            start_time,
            invalid_ratio: invalid_ratio.clamp(0.0, 1.0),
            kinds,
            n: 0,
            per_minute: 1000,
            oversize: None,
        }
    }

    fn valid_event(&mut self) -> Value {
        let user = self.rng.random_range(0..USERS);
        let ip = if self.rng.random_bool(0.85) {
            format!(
                "{}.{}.{}.{}",
                self.rng.random_range(1..224),
                self.rng.random_range(0..256),
                self.rng.random_range(0..256),
                self.rng.random_range(1..255)
            )
        } else {
            format!(
                "2001:db8:{:x}:{:x}::{:x}",
                self.rng.random_range(0..0xffffu32),
                self.rng.random_range(0..0xffffu32),
                self.rng.random_range(1..0xffffu32)
            )
        };
        // Event times advance `per_minute` events per minute, with a little jitter.
        let ts =
            self.start_time + (self.n * 60 / self.per_minute) as i64 + self.rng.random_range(0..3);
        let timestamp = if self.rng.random_bool(0.1) {
            json!(ts.to_string())
        } else {
            json!(ts)
        };
        json!({
            "user_id": uuid_for(self.seed, 1, user),
            "app_version": APP_VERSIONS[self.rng.random_range(0..APP_VERSIONS.len())],
            "device_type": if self.rng.random_bool(0.55) { "android" } else { "iOS" },
            "ip": ip,
            "locale": LOCALES[self.rng.random_range(0..LOCALES.len())],
            "device_id": uuid_for(self.seed, 2, user),
            "timestamp": timestamp,
        })
    }

    /// Event times advance by a minute every `per_minute` events (default 1000).
    /// A generator producing at a fixed rate sets `rate * 60`, so its event times
    /// keep pace with the clock instead of running into the future.
    pub fn with_events_per_minute(mut self, per_minute: u64) -> Self {
        self.per_minute = per_minute.max(1);
        self
    }

    /// Mixes junk records of chosen sizes in (see [`Oversize`]).
    pub fn with_oversize(mut self, oversize: Oversize) -> Self {
        self.oversize = Some(oversize);
        self
    }

    /// The next record.
    pub fn next_record(&mut self) -> Generated {
        let n = self.n;
        let mut event = self.valid_event();
        self.n += 1;
        if let Some(len) = self.oversize.as_ref().and_then(|o| o.size_of(n)) {
            return Generated {
                key: format!("oversize-{n}").into_bytes(),
                value: Some(junk(len, n)),
                malformed: Some(Malformed::Oversize),
            };
        }
        let key = event["user_id"]
            .as_str()
            .unwrap_or_default()
            .as_bytes()
            .to_vec();
        let malformed = (!self.kinds.is_empty() && self.rng.random_bool(self.invalid_ratio))
            .then(|| self.kinds[self.rng.random_range(0..self.kinds.len())]);
        let bytes = |v: &Value| Some(v.to_string().into_bytes());
        let value = match malformed {
            None => bytes(&event),
            Some(kind) => match kind {
                Malformed::MissingDeviceType => {
                    event.as_object_mut().unwrap().remove("device_type");
                    bytes(&event)
                }
                Malformed::InvalidUtf8 => {
                    let mut b = event.to_string().into_bytes();
                    b.splice(2..2, [0xff, 0xfe]);
                    Some(b)
                }
                Malformed::TruncatedJson => {
                    let s = event.to_string();
                    Some(s.as_bytes()[..s.len() / 2].to_vec())
                }
                Malformed::NullValue => None,
                Malformed::EmptyValue => Some(Vec::new()),
                Malformed::WrongType => {
                    event["user_id"] = json!(12345);
                    bytes(&event)
                }
                Malformed::Huge => {
                    event["padding"] = json!("x".repeat(1 << 20));
                    bytes(&event)
                }
                Malformed::NegativeTimestamp => {
                    event["timestamp"] = json!(-1_700_000_000i64);
                    bytes(&event)
                }
                Malformed::WordTimestamp => {
                    event["timestamp"] = json!("yesterday");
                    bytes(&event)
                }
                Malformed::FloatTimestamp => {
                    event["timestamp"] = json!(self.start_time as f64 + 0.5);
                    bytes(&event)
                }
                Malformed::BadIp => {
                    event["ip"] = json!("300.12.1.999");
                    bytes(&event)
                }
                Malformed::NullField => {
                    event["locale"] = Value::Null;
                    bytes(&event)
                }
                Malformed::NotAnObject => Some(json!([event]).to_string().into_bytes()),
                Malformed::FutureTimestamp => {
                    event["timestamp"] = json!(self.start_time + 10 * 365 * 86_400);
                    bytes(&event)
                }
                Malformed::BadAppVersion => {
                    event["app_version"] = json!("latest");
                    bytes(&event)
                }
                Malformed::Oversize => unreachable!("never drawn at random"),
            },
        };
        Generated {
            key,
            value,
            malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Limits, validate};

    #[test]
    fn same_seed_same_records() {
        let mut a = Generator::new(7, 1_700_000_000, 0.3, true);
        let mut b = Generator::new(7, 1_700_000_000, 0.3, true);
        for _ in 0..500 {
            assert_eq!(a.next_record(), b.next_record());
        }
    }

    #[test]
    fn malformed_records_are_rejected_and_valid_ones_accepted() {
        let mut g = Generator::new(3, 1_700_000_000, 0.5, true);
        let mut kinds = std::collections::HashSet::new();
        for _ in 0..3000 {
            let r = g.next_record();
            let res = validate(
                r.value.as_deref(),
                Some(1_700_000_000_000),
                &Limits::default(),
            );
            match r.malformed {
                Some(k) => {
                    assert!(res.is_err(), "{k:?} was accepted");
                    kinds.insert(k);
                }
                None => assert!(res.is_ok(), "{:?}", res.err()),
            }
        }
        assert_eq!(kinds.len(), Malformed::ALL.len());
    }

    #[test]
    fn oversize_records_come_at_their_positions_with_their_sizes() {
        let o = Oversize {
            runs: vec![(300_000, 2), (1 << 20, 3)],
            every: 10,
        };
        let mut g = Generator::new(5, 1_700_000_000, 0.0, false).with_oversize(o);
        let sizes: Vec<Option<usize>> = (0..40)
            .map(|_| {
                let r = g.next_record();
                r.malformed.map(|_| r.value.as_ref().map_or(0, Vec::len))
            })
            .collect();
        let mut want = vec![None; 40];
        for (at, len) in [
            (10, 300_000),
            (11, 300_000),
            (20, 1 << 20),
            (21, 1 << 20),
            (22, 1 << 20),
            (30, 300_000),
            (31, 300_000),
        ] {
            want[at] = Some(len);
        }
        assert_eq!(sizes, want);
        assert_eq!(parse_run("1048576x20"), Ok((1 << 20, 20)));
        assert_eq!(parse_run("3000000"), Ok((3_000_000, 1)));
        assert!(parse_run("3x0").is_err());
        let r = junk(300_000, 1);
        let res = validate(Some(&r), Some(1_700_000_000_000), &Limits::default());
        assert_eq!(res.unwrap_err().reason, crate::event::Reason::TooLarge);
    }
}
