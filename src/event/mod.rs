//! Validation, filtering and transformation of user-login events: pure functions.
//!
//! `process` is the single decision the pipeline and `tally verify` share: for a
//! given input record and configuration it always yields the same outcome and,
//! for processed records, the same output bytes.
//!
//! One file per layer, each with its tests: `reason` (why a record is
//! rejected), `app_version`, `validate` (the value to a [`LoginEvent`]),
//! `filter`, `transform` (the processed record's payload) and `dead_letter`
//! (the DLQ entry, and the bytes a record takes against its topic's limit).
//! Here: the configuration and the one decision that composes them.

mod app_version;
mod dead_letter;
mod filter;
#[cfg(test)]
mod fixtures;
mod reason;
mod transform;
mod validate;

pub use app_version::AppVersion;
pub use dead_letter::dead_letter;
pub(crate) use dead_letter::{dead_letter_stripped, dlq_room};
pub use filter::{FilterReason, Filters};
pub use reason::{Reason, Rejection};
pub(crate) use transform::processed_source;
pub use validate::{Limits, LoginEvent, validate};

use crate::model::{Destination, InputRecord, OutputRecord};
use dead_letter::record_size;
use transform::transform;

/// The largest record each output topic accepts (its `max.message.bytes`, read
/// from the topic at start). The DLQ entry and the processed record are decided
/// against them here, so the broker never sees a record it would refuse and the
/// decision stays a pure function `tally verify` can repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    pub processed_max_bytes: usize,
    pub dlq_max_bytes: usize,
}

/// Kafka's broker default `message.max.bytes` (1 MiB plus batch overhead).
pub const KAFKA_DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            processed_max_bytes: KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
            dlq_max_bytes: KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Everything `process` depends on besides the record itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessConfig {
    pub input_topic: String,
    pub limits: Limits,
    pub filters: Filters,
    pub output_limits: OutputLimits,
}

/// What becomes of one input record.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Processed {
        event: LoginEvent,
        output: OutputRecord,
    },
    Filtered {
        event: LoginEvent,
        why: FilterReason,
    },
    DeadLetter {
        rejection: Rejection,
        output: OutputRecord,
    },
}

impl Outcome {
    pub fn output(&self) -> Option<&OutputRecord> {
        match self {
            Outcome::Processed { output, .. } | Outcome::DeadLetter { output, .. } => Some(output),
            Outcome::Filtered { .. } => None,
        }
    }

    /// Moves the output out (leaving an empty record of the same destination), so
    /// the pipeline hands it to the producer without copying the payload.
    pub fn take_output(&mut self) -> Option<OutputRecord> {
        match self {
            Outcome::Processed { output, .. } | Outcome::DeadLetter { output, .. } => {
                let empty = OutputRecord {
                    destination: output.destination,
                    key: None,
                    value: Vec::new(),
                    headers: Vec::new(),
                    timestamp_ms: None,
                };
                Some(std::mem::replace(output, empty))
            }
            Outcome::Filtered { .. } => None,
        }
    }
}

/// The one decision for a record: processed (with its output), filtered, or dead-lettered.
pub fn process(rec: &InputRecord, cfg: &ProcessConfig) -> Outcome {
    process_owned(rec.clone(), cfg)
}

/// [`process`] taking the record by value, so a dead-lettered payload is moved
/// into its DLQ entry instead of copied (the pipeline's path).
pub fn process_owned(rec: InputRecord, cfg: &ProcessConfig) -> Outcome {
    let rejection = match validate(rec.value.as_deref(), rec.timestamp_ms, &cfg.limits) {
        Ok(event) => {
            if let Some(why) = cfg.filters.check(&event) {
                return Outcome::Filtered { event, why };
            }
            let value = transform(&event, &cfg.input_topic, rec.partition, rec.offset);
            let output = OutputRecord {
                destination: Destination::Processed,
                key: Some(event.user_id.clone().into_bytes()),
                value,
                // No headers: the payload names its source (`processed_source`).
                // Three source headers per record cost more than all the rest of
                // producing it (each is an allocation librdkafka copies,
                // serialises and frees); DLQ entries, whose payload is the input
                // as received, keep them.
                headers: Vec::new(),
                timestamp_ms: rec.timestamp_ms,
            };
            let size = record_size(output.key.as_deref(), &output.value, &output.headers);
            let limit = cfg.output_limits.processed_max_bytes;
            if size <= limit {
                return Outcome::Processed { event, output };
            }
            Rejection {
                reason: Reason::Unproducible,
                message: format!(
                    "the processed record would take {size} bytes, the output topic accepts {limit} (max.message.bytes)"
                ),
            }
        }
        Err(rejection) => rejection,
    };
    let output = dead_letter(rec, &rejection, cfg);
    Outcome::DeadLetter { rejection, output }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fixtures::{NOW_MS, cfg_with_dlq_limit, good, rejected, with};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    #[test]
    fn processed_record_over_the_output_limit_is_unproducible() {
        let mut cfg = cfg_with_dlq_limit(2 * 1024 * 1024);
        cfg.limits.max_value_bytes = 4 * 1024 * 1024;
        cfg.output_limits.processed_max_bytes = 64 * 1024;
        let value = with("note", json!("n".repeat(100_000)));
        let rec = rejected(Some(b"u".to_vec()), value.clone());
        let Outcome::DeadLetter { output, rejection } = process(&rec, &cfg) else {
            panic!("too large for the output topic")
        };
        assert_eq!(rejection.reason, Reason::Unproducible);
        assert_eq!(output.value, value, "the DLQ takes it whole");
        let small = rejected(Some(b"u".to_vec()), good().to_string().into_bytes());
        assert!(matches!(process(&small, &cfg), Outcome::Processed { .. }));
    }

    #[test]
    fn source_fields_of_the_input_do_not_forge_the_processed_source() {
        let mut v = good();
        v["source_topic"] = Value::from("elsewhere");
        v["source_partition"] = Value::from(7);
        v["source_offset"] = Value::from("forged");
        let mut rec = rejected(Some(b"k".to_vec()), v.to_string().into_bytes());
        (rec.partition, rec.offset) = (1, 9);
        let Outcome::Processed { output, .. } = process(&rec, &cfg_with_dlq_limit(1 << 20)) else {
            panic!("not processed")
        };
        assert!(output.headers.is_empty(), "{:?}", output.headers);
        let source = processed_source(&output.value).unwrap();
        assert_eq!(
            (source.topic.as_ref(), source.partition, source.offset),
            ("user-login", 1, 9)
        );
        // What is not a processed record has no source.
        assert_eq!(processed_source(b"{\"user_id\":\"u\"}"), None);
        assert_eq!(processed_source(b"not json"), None);
        assert_eq!(processed_source(br#"[true, "user-login", 1, 9]"#), None);
        let unprocessed =
            br#"{"processed":false,"source_topic":"t","source_partition":1,"source_offset":9}"#;
        assert_eq!(processed_source(unprocessed), None);
    }

    fn arb_record() -> impl Strategy<Value = InputRecord> {
        let value = prop_oneof![
            Just(None),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Some),
            (
                any::<u32>(),
                "[a-z]{1,8}",
                "[0-9]{1,2}\\.[0-9]{1,2}",
                any::<[u8; 4]>(),
                any::<bool>()
            )
                .prop_map(|(ts, user, ver, ip, string_ts)| {
                    let ts = if string_ts {
                        json!(ts.to_string())
                    } else {
                        json!(ts)
                    };
                    Some(
                        json!({"user_id": user, "app_version": ver, "device_type": "iOS",
                        "ip": std::net::Ipv4Addr::from(ip).to_string(), "locale": "de_DE",
                        "device_id": "d", "timestamp": ts, "z": 1})
                        .to_string()
                        .into_bytes(),
                    )
                }),
        ];
        (
            0..8i32,
            0..1_000_000i64,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            value,
        )
            .prop_map(|(partition, offset, key, value)| InputRecord {
                partition,
                offset,
                key,
                value,
                timestamp_ms: Some(NOW_MS * 3),
            })
    }

    proptest! {
        #[test]
        fn processing_is_deterministic(rec in arb_record()) {
            let cfg = ProcessConfig {
                input_topic: "user-login".into(),
                limits: Limits::default(),
                filters: Filters { min_app_version: Some("5.0".parse().unwrap()), allowed_device_types: None },
                output_limits: OutputLimits::default(),
            };
            let a = process(&rec, &cfg);
            let b = process(&rec.clone(), &cfg.clone());
            prop_assert_eq!(&a, &b);
            if let Outcome::Processed { output, .. } = &a {
                // Re-serialising the output is a fixed point: sorted keys, no float noise.
                let v: Value = serde_json::from_slice(&output.value).unwrap();
                prop_assert_eq!(serde_json::to_vec(&v).unwrap(), output.value.clone());
            }
        }
    }
}
