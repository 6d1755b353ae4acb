//! Refusal reasons of the callback domain, with their HTTP status, ErrorCode and metric label (SPEC table).

/// Why a callback was refused at the query/authentication stage; nothing is dead-lettered for these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectError {
    /// A known query parameter appears more than once.
    #[error("query parameter {0} appears more than once")]
    RepeatedParameter(&'static str),
    /// `SdkAppid` is absent or empty.
    #[error("query parameter SdkAppid is missing or empty")]
    MissingSdkAppId,
    /// `SdkAppid` is not a number or not a configured app.
    #[error("query parameter SdkAppid is not a configured app")]
    UnknownSdkAppId,
    /// The app has a token but the named parameter (`Sign` or `RequestTime`) is absent or empty.
    #[error("query parameter {0} is missing or empty (callback authentication is on for this app)")]
    MissingSign(&'static str),
    /// `Sign` is not 64 hexadecimal characters.
    #[error("query parameter Sign is not 64 hexadecimal characters")]
    MalformedSign,
    /// `Sign` is well formed but matches none of the app's tokens.
    #[error("query parameter Sign does not match")]
    BadSign,
    /// `RequestTime` is not an integer number of seconds.
    #[error("query parameter RequestTime is not an integer number of seconds")]
    InvalidRequestTime,
    /// `RequestTime` is further than the allowed clock skew from now.
    #[error("query parameter RequestTime is more than {max_skew_secs} s away from the server time")]
    StaleRequestTime {
        /// The configured maximum clock skew, in seconds.
        max_skew_secs: u64,
    },
}

impl RejectError {
    /// HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            Self::RepeatedParameter(_) => 400,
            Self::MissingSdkAppId | Self::UnknownSdkAppId => 403,
            Self::MissingSign(_)
            | Self::MalformedSign
            | Self::BadSign
            | Self::InvalidRequestTime
            | Self::StaleRequestTime { .. } => 401,
        }
    }

    /// `ErrorCode` of the refusal body.
    pub fn error_code(&self) -> u32 {
        match self {
            Self::RepeatedParameter(_) => 40002,
            Self::MissingSdkAppId => 40301,
            Self::UnknownSdkAppId => 40302,
            Self::MissingSign(_) => 40101,
            Self::MalformedSign | Self::BadSign => 40102,
            Self::InvalidRequestTime | Self::StaleRequestTime { .. } => 40103,
        }
    }

    /// Bounded `outcome` label for `imcf_callbacks_total`.
    pub fn outcome_label(&self) -> &'static str {
        match self {
            Self::RepeatedParameter(_) => "repeated_parameter",
            Self::MissingSdkAppId => "missing_sdk_app_id",
            Self::UnknownSdkAppId => "unknown_sdk_app_id",
            Self::MissingSign(_) => "missing_sign",
            Self::MalformedSign | Self::BadSign => "bad_sign",
            Self::InvalidRequestTime | Self::StaleRequestTime { .. } => "stale_request_time",
        }
    }
}

/// Why an authentic callback's body was refused; the edge dead-letters the raw body for every variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The body is not syntactically valid JSON (includes invalid UTF-8).
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The body is valid JSON but its top level is not an object.
    #[error("body is not a JSON object")]
    NotAnObject,
    /// Arrays/objects are nested deeper than the limit.
    #[error("body nests arrays/objects deeper than {max_depth} levels")]
    TooDeep {
        /// The nesting limit that was exceeded.
        max_depth: usize,
    },
    /// A top-level field appears twice; holds the (possibly truncated, escaped on display) field name.
    #[error("field {0:?} appears more than once")]
    DuplicateField(Box<str>),
    /// A required field is absent or null.
    #[error("field {0} is missing or null")]
    MissingField(&'static str),
    /// A known field has the wrong type or an out-of-range value.
    #[error("field {field}: expected {expected}")]
    InvalidField {
        /// The field's name as Tencent spells it.
        field: &'static str,
        /// What the field must hold.
        expected: &'static str,
    },
    /// `CallbackCommand` is in neither the query nor the body.
    #[error("CallbackCommand is missing from both the query and the body")]
    MissingCommand,
    /// Query and body `CallbackCommand` are both present and differ.
    #[error("CallbackCommand in the query differs from CallbackCommand in the body")]
    CommandMismatch,
}

impl BodyError {
    /// HTTP status of the refusal (always 400).
    pub fn status(&self) -> u16 {
        400
    }

    /// `ErrorCode` of the refusal body.
    pub fn error_code(&self) -> u32 {
        match self {
            Self::InvalidJson(_) | Self::NotAnObject | Self::TooDeep { .. } => 40010,
            Self::DuplicateField(_) => 40011,
            Self::MissingField(_) => 40012,
            Self::InvalidField { .. } => 40013,
            Self::MissingCommand => 40014,
            Self::CommandMismatch => 40015,
        }
    }

    /// Bounded `outcome` label for `imcf_callbacks_total` (also the dead letter's `reason_code`).
    pub fn outcome_label(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) | Self::NotAnObject | Self::TooDeep { .. } => "invalid_json",
            Self::DuplicateField(_) => "duplicate_field",
            Self::MissingField(_) => "missing_field",
            Self::InvalidField { .. } => "invalid_field",
            Self::MissingCommand => "missing_command",
            Self::CommandMismatch => "command_mismatch",
        }
    }
}

/// Why an authentic, well-formed callback is answered with a refusal by the routing policy; nothing is
/// dead-lettered for these (a routed callback is published before the refusal is sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteRefusal {
    /// A before-callback while `--refuse-before-callbacks` is set: the user's action must not go ahead.
    #[error("before-callbacks are refused by this endpoint (CallbackCommand contains Before or Prev)")]
    BeforeCallback,
    /// No route matches the command and `--unrouted reject` is set.
    #[error("CallbackCommand has no route on this endpoint")]
    Unrouted,
}

impl RouteRefusal {
    /// HTTP status of the refusal. A before-callback refusal is 200: Tencent counts a non-200 answer as a failed
    /// callback rather than reading its `ErrorCode`, and only the `ErrorCode` of a 200 answer blocks the action.
    pub fn status(&self) -> u16 {
        match self {
            Self::BeforeCallback => 200,
            Self::Unrouted => 404,
        }
    }

    /// `ErrorCode` of the refusal body: 1 is Tencent's documented "refuse" answer to a before-callback.
    pub fn error_code(&self) -> u32 {
        match self {
            Self::BeforeCallback => 1,
            Self::Unrouted => 40401,
        }
    }

    /// Bounded `outcome` label for `imcf_callbacks_total`.
    pub fn outcome_label(&self) -> &'static str {
        match self {
            Self::BeforeCallback => "before_refused",
            Self::Unrouted => "unrouted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_errors_follow_the_spec_table() {
        let cases: [(RejectError, u16, u32, &str); 8] = [
            (RejectError::RepeatedParameter("Sign"), 400, 40002, "repeated_parameter"),
            (RejectError::MissingSdkAppId, 403, 40301, "missing_sdk_app_id"),
            (RejectError::UnknownSdkAppId, 403, 40302, "unknown_sdk_app_id"),
            (RejectError::MissingSign("RequestTime"), 401, 40101, "missing_sign"),
            (RejectError::MalformedSign, 401, 40102, "bad_sign"),
            (RejectError::BadSign, 401, 40102, "bad_sign"),
            (RejectError::InvalidRequestTime, 401, 40103, "stale_request_time"),
            (RejectError::StaleRequestTime { max_skew_secs: 60 }, 401, 40103, "stale_request_time"),
        ];
        for (err, status, code, label) in cases {
            assert_eq!(err.status(), status, "{err:?}");
            assert_eq!(err.error_code(), code, "{err:?}");
            assert_eq!(err.outcome_label(), label, "{err:?}");
        }
    }

    #[test]
    fn body_errors_follow_the_spec_table() {
        let cases: [(BodyError, u32, &str); 8] = [
            (BodyError::InvalidJson("x".into()), 40010, "invalid_json"),
            (BodyError::NotAnObject, 40010, "invalid_json"),
            (BodyError::TooDeep { max_depth: 127 }, 40010, "invalid_json"),
            (BodyError::DuplicateField("GroupId".into()), 40011, "duplicate_field"),
            (BodyError::MissingField("GroupId"), 40012, "missing_field"),
            (
                BodyError::InvalidField { field: "ErrorCode", expected: "an integer or numeric string" },
                40013,
                "invalid_field",
            ),
            (BodyError::MissingCommand, 40014, "missing_command"),
            (BodyError::CommandMismatch, 40015, "command_mismatch"),
        ];
        for (err, code, label) in cases {
            assert_eq!(err.status(), 400, "{err:?}");
            assert_eq!(err.error_code(), code, "{err:?}");
            assert_eq!(err.outcome_label(), label, "{err:?}");
        }
    }

    #[test]
    fn route_refusals() {
        let cases = [
            (RouteRefusal::BeforeCallback, 200, 1, "before_refused"),
            (RouteRefusal::Unrouted, 404, 40401, "unrouted"),
        ];
        for (refusal, status, code, label) in cases {
            assert_eq!((refusal.status(), refusal.error_code(), refusal.outcome_label()), (status, code, label));
            assert!(refusal.to_string().contains("CallbackCommand"), "{refusal}");
        }
    }

    #[test]
    fn display_names_the_parameter_or_field() {
        assert_eq!(
            RejectError::RepeatedParameter("SdkAppid").to_string(),
            "query parameter SdkAppid appears more than once"
        );
        assert_eq!(
            RejectError::StaleRequestTime { max_skew_secs: 60 }.to_string(),
            "query parameter RequestTime is more than 60 s away from the server time"
        );
        assert_eq!(
            BodyError::InvalidField { field: "ErrorCode", expected: "an integer or numeric string" }.to_string(),
            "field ErrorCode: expected an integer or numeric string"
        );
        assert_eq!(BodyError::MissingField("GroupId").to_string(), "field GroupId is missing or null");
        assert_eq!(BodyError::DuplicateField("a\nb".into()).to_string(), "field \"a\\nb\" appears more than once");
    }
}
