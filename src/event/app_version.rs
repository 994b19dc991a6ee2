//! The application version `--min-app-version` compares events by.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A dotted numeric application version (`2.13.1`, `4.0`, `3.2.1-beta`).
/// Compared component by component as numbers, missing components as 0; a
/// `-`/`+` suffix is kept for display and ignored in comparisons.
#[derive(Debug, Clone, Eq)]
pub struct AppVersion {
    /// Missing components are 0, as comparisons count them; an array, not a
    /// `Vec`: one allocation less per event.
    parts: [u64; 4],
    text: String,
}

impl AppVersion {
    /// The version as written (what output and aggregates show).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// [`FromStr`] keeping the given string instead of copying it.
    pub fn parse_owned(s: String) -> Result<Self, String> {
        let parts = Self::parts(&s)?;
        Ok(AppVersion { parts, text: s })
    }

    /// One pass over the bytes (this runs for every record, where splitting
    /// and parsing each part costs more): the numeric prefix before any `-`/`+`, 1 to 4 non-empty
    /// decimal parts, each within u64.
    fn parts(s: &str) -> Result<[u64; 4], String> {
        let bad = || format!("{s:?} is not a version like 2.13.1 (1 to 4 dot-separated numbers)");
        let mut parts = [0u64; 4];
        let (mut n, mut digits) = (0, 0);
        for &c in s.as_bytes() {
            match c {
                b'0'..=b'9' => {
                    let part = parts.get_mut(n).ok_or_else(bad)?;
                    *part = part
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(c - b'0')))
                        .ok_or_else(bad)?;
                    digits += 1;
                }
                b'.' if digits > 0 => (n, digits) = (n + 1, 0),
                b'-' | b'+' => break,
                _ => return Err(bad()),
            }
        }
        if digits == 0 {
            return Err(bad());
        }
        Ok(parts)
    }
}

impl FromStr for AppVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse_owned(s.to_string())
    }
}

impl PartialEq for AppVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl PartialOrd for AppVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for AppVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts.cmp(&other.parts)
    }
}

impl fmt::Display for AppVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn versions_compare_as_numbers() {
        let v = |s: &str| s.parse::<AppVersion>().unwrap();
        assert!(v("2.10.0") > v("2.9.9"));
        assert_eq!(v("2.0"), v("2.0.0"));
        assert!(v("10") > v("9.99"));
        assert!(v("3.2.1-beta") > v("3.2.0"));
        assert!("1..2".parse::<AppVersion>().is_err());
        assert!("v1.2".parse::<AppVersion>().is_err());
        assert!("1.2.3.4.5".parse::<AppVersion>().is_err());
        assert!("".parse::<AppVersion>().is_err());
        assert!("+1".parse::<AppVersion>().is_err());
        assert!("1.2.".parse::<AppVersion>().is_err());
        assert_eq!(v("1.2.3.4+b7").as_str(), "1.2.3.4+b7");
        assert!(v("1.2.3.4") > v("1.2.3"));
    }

    /// The split-and-parse reading of a version that `AppVersion::parts` does in
    /// one pass: the reference it must agree with.
    fn parts_by_splitting(s: &str) -> Option<[u64; 4]> {
        let numeric = s.split(['-', '+']).next().unwrap_or_default();
        if !numeric.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
            return None;
        }
        let mut parts = [0; 4];
        for (n, part) in numeric.split('.').enumerate() {
            *parts.get_mut(n)? = part.parse().ok()?;
        }
        Some(parts)
    }

    proptest! {
        #[test]
        fn app_version_parts_agree_with_splitting(
            s in "[0-9.+a-é١１-]{0,12}|[0-9]{1,21}(\\.[0-9]{0,21}){0,5}([-+][0-9a-zé.]{0,4})?",
        ) {
            prop_assert_eq!(AppVersion::parts(&s).ok(), parts_by_splitting(&s), "{:?}", s);
        }
    }

    #[test]
    fn app_version_parts_at_the_edges() {
        for s in [
            "18446744073709551615",
            "1.18446744073709551615",
            "0000000000000000000000001.2",
            "1é",
            "١",
            "１",
            "1-é",
            "-1",
            "+1",
            "1.2.3.4.5",
            "1.2.3.4-5.6",
        ] {
            assert_eq!(AppVersion::parts(s).ok(), parts_by_splitting(s), "{s:?}");
        }
        assert_eq!(
            AppVersion::parts("18446744073709551615").ok(),
            Some([u64::MAX, 0, 0, 0])
        );
        assert!(AppVersion::parts("18446744073709551616").is_err());
        assert_eq!(AppVersion::parts("1-é").ok(), Some([1, 0, 0, 0]));
    }
}
