//! Why a record is rejected: stable codes, written to the DLQ's `tally.reason`
//! header and counted by reason.

use std::fmt;

/// Stable reason codes for rejected records (written to the DLQ's `tally.reason` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    NullValue,
    EmptyValue,
    TooLarge,
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    MissingField,
    NullField,
    WrongType,
    EmptyField,
    BadTimestamp,
    NegativeTimestamp,
    FutureTimestamp,
    BadIp,
    BadAppVersion,
    /// The output could not be written: larger than the output topic accepts, or
    /// refused by the broker for this record alone (size, invalid record, policy).
    Unproducible,
    /// At the head of too many consecutive aborted transactions (see `--poison-aborts`).
    Poison,
}

impl Reason {
    pub const ALL: [Reason; 17] = [
        Reason::NullValue,
        Reason::EmptyValue,
        Reason::TooLarge,
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::NotAnObject,
        Reason::MissingField,
        Reason::NullField,
        Reason::WrongType,
        Reason::EmptyField,
        Reason::BadTimestamp,
        Reason::NegativeTimestamp,
        Reason::FutureTimestamp,
        Reason::BadIp,
        Reason::BadAppVersion,
        Reason::Unproducible,
        Reason::Poison,
    ];

    /// Reasons decided while producing, not by [`process`](super::process) alone: `tally verify`
    /// cannot predict them and accepts such an entry in place of any outcome.
    pub fn decided_at_runtime(self) -> bool {
        matches!(self, Reason::Unproducible | Reason::Poison)
    }

    pub fn code(self) -> &'static str {
        match self {
            Reason::NullValue => "null_value",
            Reason::EmptyValue => "empty_value",
            Reason::TooLarge => "too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingField => "missing_field",
            Reason::NullField => "null_field",
            Reason::WrongType => "wrong_type",
            Reason::EmptyField => "empty_field",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::NegativeTimestamp => "negative_timestamp",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::BadIp => "bad_ip",
            Reason::BadAppVersion => "bad_app_version",
            Reason::Unproducible => "unproducible",
            Reason::Poison => "poison",
        }
    }

    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Why a record was rejected: a stable code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_round_trip() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
    }
}
