//! Valid events that are not wanted downstream.

use std::collections::BTreeSet;

use super::app_version::AppVersion;
use super::validate::LoginEvent;

/// Records that are valid but not wanted downstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    /// Events from app versions lower than this are filtered out.
    pub min_app_version: Option<AppVersion>,
    /// When set, only these device types (compared case-insensitively) pass.
    pub allowed_device_types: Option<BTreeSet<String>>,
}

/// Why a valid record was filtered out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterReason {
    AppVersionTooOld,
    DeviceTypeNotAllowed,
}

impl Filters {
    pub fn check(&self, event: &LoginEvent) -> Option<FilterReason> {
        if self
            .min_app_version
            .as_ref()
            .is_some_and(|min| event.app_version < *min)
        {
            return Some(FilterReason::AppVersionTooOld);
        }
        if let Some(allowed) = &self.allowed_device_types {
            if !allowed.contains(&event.device_type.to_lowercase()) {
                return Some(FilterReason::DeviceTypeNotAllowed);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::fixtures::{check, good};

    #[test]
    fn filters() {
        let e = check(Some(&good().to_string().into_bytes())).unwrap();
        let f = Filters {
            min_app_version: Some("2.10".parse().unwrap()),
            allowed_device_types: None,
        };
        assert_eq!(f.check(&e), Some(FilterReason::AppVersionTooOld));
        let f = Filters {
            min_app_version: Some("2.3.4".parse().unwrap()),
            allowed_device_types: Some(["ios".to_string()].into()),
        };
        assert_eq!(f.check(&e), Some(FilterReason::DeviceTypeNotAllowed));
        let f = Filters {
            min_app_version: None,
            allowed_device_types: Some(["android".to_string(), "ios".to_string()].into()),
        };
        assert_eq!(f.check(&e), None);
    }
}
