//! Mapping of Tencent's group-send ErrorCode values to error categories and bounded metric labels (shared doc §7).

/// Why a group message failed, derived from its `ErrorCode` (shared doc §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCategory {
    /// Send-rate or API frequency limits.
    RateLimited,
    /// Refused by content moderation.
    ContentModerated,
    /// The message or its JSON is over the size limit.
    MessageTooLarge,
    /// The sender is muted in the group.
    SenderMuted,
    /// The sender lacks permission or is not a member.
    PermissionDenied,
    /// The group does not exist, is disbanded, or is not available to this edition.
    GroupUnavailable,
    /// The send request itself was invalid.
    InvalidRequest,
    /// The app's own before-send callback refused or failed.
    BlockedByCallback,
    /// An IM backend internal error.
    InternalError,
    /// Any code not documented in §7.
    Unknown,
}

impl ErrorCategory {
    /// Every category, in declaration order (for pre-initialising metrics).
    pub const ALL: [ErrorCategory; 10] = [
        Self::RateLimited,
        Self::ContentModerated,
        Self::MessageTooLarge,
        Self::SenderMuted,
        Self::PermissionDenied,
        Self::GroupUnavailable,
        Self::InvalidRequest,
        Self::BlockedByCallback,
        Self::InternalError,
        Self::Unknown,
    ];

    /// The category of a Tencent `ErrorCode`.
    pub fn from_code(code: i64) -> Self {
        match code {
            10023 | 10006 | 60007 | 60011 | 60018 | 60019 => Self::RateLimited,
            80001 | 80004 => Self::ContentModerated,
            80002 | 93000 => Self::MessageTooLarge,
            10017 => Self::SenderMuted,
            10007 => Self::PermissionDenied,
            10010 | 10015 | 11000 | 10059 | 10058 => Self::GroupUnavailable,
            10003 | 10004 | 10005 | 10011 | 10012 | 10019 | 10053 => Self::InvalidRequest,
            10016 | 80003 | CUSTOM_REFUSAL_FIRST..=CUSTOM_REFUSAL_LAST => Self::BlockedByCallback,
            10002 | 90992 => Self::InternalError,
            _ => Self::Unknown,
        }
    }

    /// The snake_case name used in events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::ContentModerated => "content_moderated",
            Self::MessageTooLarge => "message_too_large",
            Self::SenderMuted => "sender_muted",
            Self::PermissionDenied => "permission_denied",
            Self::GroupUnavailable => "group_unavailable",
            Self::InvalidRequest => "invalid_request",
            Self::BlockedByCallback => "blocked_by_callback",
            Self::InternalError => "internal_error",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCategory {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

const CUSTOM_REFUSAL_FIRST: i64 = 10100;
const CUSTOM_REFUSAL_LAST: i64 = 10200;

/// Label for the app-defined refusal codes 10100–10200, kept as one label so the set stays small.
pub const CUSTOM_REFUSAL_LABEL: &str = "10100-10200";

/// Label for every code not documented in §7.
pub const OTHER_CODE_LABEL: &str = "other";

/// Every value `error_code_label` can return: the documented codes in §7 order, the custom refusal range,
/// then `"other"` (for pre-initialising metrics).
pub const ERROR_CODE_LABELS: [&str; 30] = [
    "10023",
    "10006",
    "60007",
    "60011",
    "60018",
    "60019",
    "80001",
    "80004",
    "80002",
    "93000",
    "10017",
    "10007",
    "10010",
    "10015",
    "11000",
    "10059",
    "10058",
    "10003",
    "10004",
    "10005",
    "10011",
    "10012",
    "10019",
    "10053",
    "10016",
    "80003",
    CUSTOM_REFUSAL_LABEL,
    "10002",
    "90992",
    OTHER_CODE_LABEL,
];

/// Bounded `error_code` metric label: the documented code as a decimal string, `"10100-10200"` for the
/// app-defined refusal range, else `"other"`.
pub fn error_code_label(code: i64) -> &'static str {
    if (CUSTOM_REFUSAL_FIRST..=CUSTOM_REFUSAL_LAST).contains(&code) {
        return CUSTOM_REFUSAL_LABEL;
    }
    DOCUMENTED_CODES.iter().find(|(c, _)| *c == code).map_or(OTHER_CODE_LABEL, |(_, label)| label)
}

// Single codes of §7 with their labels; a linear scan of 28 entries beats hashing at this size.
const DOCUMENTED_CODES: [(i64, &str); 28] = [
    (10023, "10023"),
    (10006, "10006"),
    (60007, "60007"),
    (60011, "60011"),
    (60018, "60018"),
    (60019, "60019"),
    (80001, "80001"),
    (80004, "80004"),
    (80002, "80002"),
    (93000, "93000"),
    (10017, "10017"),
    (10007, "10007"),
    (10010, "10010"),
    (10015, "10015"),
    (11000, "11000"),
    (10059, "10059"),
    (10058, "10058"),
    (10003, "10003"),
    (10004, "10004"),
    (10005, "10005"),
    (10011, "10011"),
    (10012, "10012"),
    (10019, "10019"),
    (10053, "10053"),
    (10016, "10016"),
    (80003, "80003"),
    (10002, "10002"),
    (90992, "90992"),
];

#[cfg(test)]
mod tests {
    use super::*;

    // Every code of shared doc §7, by cause.
    const TABLE: [(ErrorCategory, &[i64]); 9] = [
        (ErrorCategory::RateLimited, &[10023, 10006, 60007, 60011, 60018, 60019]),
        (ErrorCategory::ContentModerated, &[80001, 80004]),
        (ErrorCategory::MessageTooLarge, &[80002, 93000]),
        (ErrorCategory::SenderMuted, &[10017]),
        (ErrorCategory::PermissionDenied, &[10007]),
        (ErrorCategory::GroupUnavailable, &[10010, 10015, 11000, 10059, 10058]),
        (ErrorCategory::InvalidRequest, &[10003, 10004, 10005, 10011, 10012, 10019, 10053]),
        (ErrorCategory::BlockedByCallback, &[10016, 80003, 10100, 10150, 10200]),
        (ErrorCategory::InternalError, &[10002, 90992]),
    ];

    #[test]
    fn every_documented_code_maps_to_its_category_and_label() {
        for (category, codes) in TABLE {
            for &code in codes {
                assert_eq!(ErrorCategory::from_code(code), category, "code {code}");
                let label = error_code_label(code);
                if (10100..=10200).contains(&code) {
                    assert_eq!(label, "10100-10200");
                } else {
                    assert_eq!(label, code.to_string());
                }
                assert!(ERROR_CODE_LABELS.contains(&label), "{label}");
            }
        }
    }

    #[test]
    fn undocumented_codes_are_unknown_and_other() {
        for code in [0, 1, -1, 10099, 10201, 10001, 70001, i64::MAX, i64::MIN] {
            assert_eq!(ErrorCategory::from_code(code), ErrorCategory::Unknown, "{code}");
            assert_eq!(error_code_label(code), "other", "{code}");
        }
    }

    #[test]
    fn labels_and_names_are_complete_and_distinct() {
        let names: Vec<&str> = ErrorCategory::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "rate_limited",
                "content_moderated",
                "message_too_large",
                "sender_muted",
                "permission_denied",
                "group_unavailable",
                "invalid_request",
                "blocked_by_callback",
                "internal_error",
                "unknown"
            ]
        );
        let mut labels = ERROR_CODE_LABELS.to_vec();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ERROR_CODE_LABELS.len());
        let documented = TABLE.iter().map(|(_, codes)| codes.len()).sum::<usize>();
        // 28 single codes + 3 samples of the custom range collapse to 29 labels, plus "other".
        assert_eq!(documented - 3 + 1 + 1, ERROR_CODE_LABELS.len());
        assert_eq!(serde_json::to_string(&ErrorCategory::SenderMuted).unwrap(), "\"sender_muted\"");
    }
}
