//! Classification of an authenticated callback and normalization of the exception callback into the v1 event.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::body::{BodyFields, Known};
use super::category::ErrorCategory;
use super::error::BodyError;
use super::json::{JsonObject, Verbatim};
use super::query::AuthenticatedQuery;

/// The callback command this service publishes.
pub const EXCEPTION_COMMAND: &str = "Group.CallbackSendMsgException";

/// Value of the event's `schema` field and of the record's `schema` header.
pub const SCHEMA_V1: &str = "tencent.im.group.send_msg_exception/v1";

/// What an authenticated callback turned out to be.
// The exception variant is the hot path: boxing it would add an allocation per request to save a move.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Classified<'a> {
    /// A `Group.CallbackSendMsgException`, normalized.
    Exception(ExceptionEvent<'a>),
    /// Any other command: answer OK, do not publish.
    Other {
        /// The command, from the body or else the query.
        command: Cow<'a, str>,
    },
}

/// The event ID: lowercase hex SHA-256 over the decimal `sdk_app_id`, `"\n"`, and the raw body bytes.
/// Also the key of dead letters.
pub fn event_id(sdk_app_id: u64, body: &[u8]) -> String {
    let mut digits = itoa::Buffer::new();
    let hash = Sha256::new().chain_update(digits.format(sdk_app_id)).chain_update(b"\n").chain_update(body).finalize();
    let mut hex = [0u8; 64];
    hex::encode_to_slice(hash, &mut hex).expect("32 bytes are 64 hex digits");
    String::from_utf8(hex.to_vec()).expect("hex digits are ASCII")
}

/// Parses the body once, resolves `CallbackCommand` (query vs body), and for the exception command
/// normalizes the body into the v1 event. Every error is an authentic-but-unusable body (dead-letter it).
pub fn classify<'a>(
    query: &'a AuthenticatedQuery<'a>,
    body: &'a [u8],
    received_at: SystemTime,
) -> Result<Classified<'a>, BodyError> {
    let fields = BodyFields::parse(body)?;
    let command = resolve_command(query, &fields)?;
    if command != EXCEPTION_COMMAND {
        return Ok(Classified::Other { command });
    }
    exception_event(query, body, fields, command, received_at).map(Classified::Exception)
}

impl Classified<'_> {
    /// The callback's command (`EXCEPTION_COMMAND` for the exception variant).
    pub fn command(&self) -> &str {
        match self {
            Classified::Exception(event) => event.callback_command(),
            Classified::Other { command } => command,
        }
    }
}

/// `CallbackCommand` from the body, else the query; both present and different is an error.
pub(super) fn resolve_command<'a>(
    query: &'a AuthenticatedQuery<'a>,
    fields: &BodyFields<'a>,
) -> Result<Cow<'a, str>, BodyError> {
    match (query.callback_command.as_deref(), fields.string(Known::CallbackCommand)?) {
        (Some(in_query), Some(in_body)) if in_query != in_body => Err(BodyError::CommandMismatch),
        (_, Some(in_body)) => Ok(in_body),
        (Some(in_query), None) => Ok(Cow::Borrowed(in_query)),
        (None, None) => Err(BodyError::MissingCommand),
    }
}

/// Normalizes the exception callback's parsed body into the v1 event, checking every known field.
pub(super) fn exception_event<'a>(
    query: &'a AuthenticatedQuery<'a>,
    body: &'a [u8],
    fields: BodyFields<'a>,
    command: Cow<'a, str>,
    received_at: SystemTime,
) -> Result<ExceptionEvent<'a>, BodyError> {
    let group_id = fields.required_string(Known::GroupId)?;
    let group_type = fields.required_string(Known::Type)?;
    let from_account = fields.string(Known::FromAccount)?;
    let operator_account = fields.string(Known::OperatorAccount)?;
    let random = fields.integer::<u64>(Known::Random, "a non-negative integer or numeric string")?;
    let online_only = fields.flag(Known::OnlineOnlyFlag)?;
    let msg_body = fields.array(Known::MsgBody)?;
    let cloud_custom_data = fields.string(Known::CloudCustomData)?;
    let error_code = fields
        .integer::<i64>(Known::ErrorCode, "an integer or numeric string")?
        .ok_or(BodyError::MissingField(Known::ErrorCode.name()))?;
    let error_info = fields.string(Known::ErrorInfo)?;
    let event_time_ms = fields.integer::<i64>(Known::EventTime, "an integer or numeric string (milliseconds)")?;

    Ok(ExceptionEvent {
        event_id: event_id(query.sdk_app_id, body),
        sdk_app_id: query.sdk_app_id,
        callback_command: command,
        group_id,
        group_type,
        from_account,
        operator_account,
        random,
        online_only,
        msg_body,
        cloud_custom_data,
        error_code,
        error_info,
        category: ErrorCategory::from_code(error_code),
        event_time_ms,
        received_at,
        client_ip: query.client_ip.as_deref(),
        opt_platform: query.opt_platform.as_deref(),
        extra: fields.extra,
        body_len: body.len(),
    })
}

/// A normalized `Group.CallbackSendMsgException`, borrowing from the query and body.
#[derive(Debug)]
pub struct ExceptionEvent<'a> {
    event_id: String,
    sdk_app_id: u64,
    callback_command: Cow<'a, str>,
    group_id: Cow<'a, str>,
    group_type: Cow<'a, str>,
    from_account: Option<Cow<'a, str>>,
    operator_account: Option<Cow<'a, str>>,
    random: Option<u64>,
    online_only: Option<bool>,
    msg_body: Option<&'a RawValue>,
    cloud_custom_data: Option<Cow<'a, str>>,
    error_code: i64,
    error_info: Option<Cow<'a, str>>,
    category: ErrorCategory,
    event_time_ms: Option<i64>,
    received_at: SystemTime,
    client_ip: Option<&'a str>,
    opt_platform: Option<&'a str>,
    extra: Vec<(Cow<'a, str>, &'a RawValue)>,
    body_len: usize,
}

impl ExceptionEvent<'_> {
    /// `event_id` (also the record's `event_id` header).
    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    /// The app the callback belongs to.
    pub fn sdk_app_id(&self) -> u64 {
        self.sdk_app_id
    }

    /// `callback_command` (always `EXCEPTION_COMMAND`).
    pub fn callback_command(&self) -> &str {
        &self.callback_command
    }

    /// `GroupId`: the Kafka record key.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// `Type`, as sent.
    pub fn group_type(&self) -> &str {
        &self.group_type
    }

    /// `ErrorCode`.
    pub fn error_code(&self) -> i64 {
        self.error_code
    }

    /// The category of `ErrorCode`.
    pub fn category(&self) -> ErrorCategory {
        self.category
    }

    /// `EventTime` in milliseconds since the epoch, if sent.
    pub fn event_time_ms(&self) -> Option<i64> {
        self.event_time_ms
    }

    /// The event as schema v1 JSON, fields in SPEC order.
    pub fn to_json(&self) -> Vec<u8> {
        // The event holds most of the body, plus its own keys, timestamps and event ID.
        let mut json = JsonObject::with_capacity(self.body_len + 640);
        json.field("schema", SCHEMA_V1)
            .field("event_id", &self.event_id)
            .field("sdk_app_id", &self.sdk_app_id)
            .field("callback_command", &self.callback_command)
            .field("group_id", &self.group_id)
            .field("group_type", &self.group_type)
            .field("from_account", &self.from_account)
            .field("operator_account", &self.operator_account)
            .field("random", &self.random)
            .field("online_only", &self.online_only)
            .field("msg_body", &Verbatim(self.msg_body.map_or("[]", RawValue::get)))
            .field("cloud_custom_data", &self.cloud_custom_data)
            .field("error_code", &self.error_code)
            .field("error_info", &self.error_info)
            .field("error_category", self.category.as_str())
            .field("event_time_ms", &self.event_time_ms)
            .field("event_time", &self.event_time_ms.and_then(millis_to_time))
            .field("received_at", &self.received_at)
            .field("client_ip", &self.client_ip)
            .field("opt_platform", &self.opt_platform)
            .field("extra", self.extra.as_slice());
        json.finish()
    }
}

pub(super) fn millis_to_time(ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(ms).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const QUERY: &str = "SdkAppid=1400000000&CallbackCommand=Group.CallbackSendMsgException&contenttype=json&ClientIP=10.0.0.1&OptPlatform=iOS";

    /// Known answers, computed outside this code (`printf '1400000000\n%s' BODY | sha256sum`), so that a
    /// misreading of the formula shared by the code and the tests' own oracle cannot pass.
    #[test]
    fn event_id_known_answers() {
        assert_eq!(event_id(1_400_000_000, b"{}"), "0b5e657c566736771a76608a556dda634f0221fa215492d04850056ef0290978");
        let sample = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/doc_sample.json")).unwrap();
        assert_eq!(
            event_id(1_400_000_000, &sample),
            "beea4c5965058e1f608900b4804d37cb26f3c9f64a2c77c0b63e1cd9a11105ed"
        );
    }
    const BARE_QUERY: &str = "SdkAppid=1400000000";

    use super::super::test_support::{query, received};

    fn event_json(raw_query: &str, body: &[u8]) -> serde_json::Value {
        let q = query(raw_query);
        match classify(&q, body, received()).unwrap() {
            Classified::Exception(e) => serde_json::from_slice(&e.to_json()).unwrap(),
            other => panic!("not an exception: {other:?}"),
        }
    }

    fn body_error(raw_query: &str, body: &[u8]) -> BodyError {
        classify(&query(raw_query), body, received()).unwrap_err()
    }

    fn doc_expected() -> serde_json::Value {
        serde_json::from_slice(include_bytes!("../../tests/fixtures/doc_sample.expected.json")).unwrap()
    }

    /// The doc sample's expected event with `event_id` recomputed for `body` and some fields replaced.
    fn expected_with(body: &[u8], changes: serde_json::Value) -> serde_json::Value {
        let mut expected = doc_expected();
        expected["event_id"] = event_id(1_400_000_000, body).into();
        for (k, v) in changes.as_object().unwrap() {
            assert!(expected.get(k).is_some(), "unknown field {k}");
            expected[k] = v.clone();
        }
        expected
    }

    #[test]
    fn doc_sample_normalizes_to_the_expected_event() {
        let body = include_bytes!("../../tests/fixtures/doc_sample.json");
        assert_eq!(event_json(QUERY, body), doc_expected());

        let q = query(QUERY);
        let Classified::Exception(e) = classify(&q, body, received()).unwrap() else { panic!("not an exception") };
        assert_eq!(e.event_id(), "beea4c5965058e1f608900b4804d37cb26f3c9f64a2c77c0b63e1cd9a11105ed");
        assert_eq!(e.group_id(), "@TGS#2J4SZEAEL");
        assert_eq!(e.group_type(), "Public");
        assert_eq!(e.sdk_app_id(), 1_400_000_000);
        assert_eq!(e.callback_command(), EXCEPTION_COMMAND);
        assert_eq!(e.error_code(), 10023);
        assert_eq!(e.category(), ErrorCategory::RateLimited);
        assert_eq!(e.event_time_ms(), Some(1_670_574_414_123));
        // Field order is part of the contract, and msg_body is copied byte for byte.
        let text = String::from_utf8(e.to_json()).unwrap();
        let order = [
            "schema",
            "event_id",
            "sdk_app_id",
            "callback_command",
            "group_id",
            "group_type",
            "from_account",
            "operator_account",
            "random",
            "online_only",
            "msg_body",
            "cloud_custom_data",
            "error_code",
            "error_info",
            "error_category",
            "event_time_ms",
            "event_time",
            "received_at",
            "client_ip",
            "opt_platform",
            "extra",
        ];
        let mut rest = text.as_str();
        for key in order {
            let at = rest.find(&format!("\"{key}\":")).unwrap_or_else(|| panic!("{key} out of order: {text}"));
            rest = &rest[at..];
        }
        assert!(text.contains(r#""msg_body":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"red packet"}}],"#));
        assert!(text.ends_with(r#""client_ip":"10.0.0.1","opt_platform":"iOS","extra":{}}"#), "{text}");
    }

    #[test]
    fn event_id_hashes_decimal_id_newline_body() {
        // printf '1400000000\n{}' | sha256sum ; printf '0\n' | sha256sum
        assert_eq!(event_id(1_400_000_000, b"{}"), "0b5e657c566736771a76608a556dda634f0221fa215492d04850056ef0290978");
        assert_eq!(event_id(0, b""), "9a271f2a916b0b6ee6cecb2426f0b3206ef074578be55d9bc94f6f3fe3ab86aa");
        assert_eq!(event_id(u64::MAX, b"x").len(), 64);
    }

    #[test]
    fn numeric_event_time_and_community_group() {
        let body = include_bytes!("../../tests/fixtures/numeric_event_time.json");
        let expected = expected_with(
            body,
            json!({
                "group_id": "@TGS#_community", "group_type": "Community", "operator_account": "jared",
                "random": 2147483648u64, "online_only": false,
                "msg_body": [{"MsgType":"TIMTextElem","MsgContent":{"Text":"hi"}}],
                "cloud_custom_data": null, "error_code": 80001, "error_info": "sensitive text",
                "error_category": "content_moderated",
                "event_time_ms": 1670574414000u64, "event_time": "2022-12-09T08:26:54.000Z",
            }),
        );
        assert_eq!(event_json(QUERY, body), expected);
    }

    #[test]
    fn string_numbers_are_accepted() {
        let body = include_bytes!("../../tests/fixtures/string_numbers.json");
        let expected = expected_with(
            body,
            json!({
                "group_type": "Work", "from_account": "u1", "operator_account": "u1", "random": 42,
                "online_only": false, "msg_body": [], "cloud_custom_data": null, "error_code": 10017,
                "error_info": "muted", "error_category": "sender_muted",
                "event_time_ms": 1670574414999u64, "event_time": "2022-12-09T08:26:54.999Z",
            }),
        );
        assert_eq!(event_json(QUERY, body), expected);
    }

    #[test]
    fn nulls_become_nulls_and_empty_msg_body() {
        let body = include_bytes!("../../tests/fixtures/nulls.json");
        let expected = expected_with(
            body,
            json!({
                "group_id": "g1", "group_type": "Meeting", "from_account": null, "operator_account": null,
                "random": null, "online_only": null, "msg_body": [], "cloud_custom_data": null,
                "error_code": 10002, "error_info": null, "error_category": "internal_error",
                "event_time_ms": null, "event_time": null,
            }),
        );
        assert_eq!(event_json(QUERY, body), expected);
    }

    #[test]
    fn minimal_body_with_command_only_in_query_and_no_optional_query_params() {
        let body = include_bytes!("../../tests/fixtures/minimal.json");
        let expected = expected_with(
            body,
            json!({
                "group_id": "g2", "group_type": "AVChatRoom", "from_account": null, "operator_account": null,
                "random": null, "online_only": null, "msg_body": [], "cloud_custom_data": null,
                "error_code": 424242, "error_info": null, "error_category": "unknown",
                "event_time_ms": null, "event_time": null, "client_ip": null, "opt_platform": null,
            }),
        );
        let raw = "SdkAppid=1400000000&CallbackCommand=Group.CallbackSendMsgException";
        assert_eq!(event_json(raw, body), expected);
        // Without any command: missing_command.
        assert_eq!(body_error(BARE_QUERY, body), BodyError::MissingCommand);
    }

    #[test]
    fn unknown_fields_kept_verbatim_in_order_with_decoded_keys() {
        let body = include_bytes!("../../tests/fixtures/unknown_fields.json");
        let expected = expected_with(
            body,
            json!({
                "group_id": "g3", "from_account": null, "operator_account": null, "random": null,
                "online_only": null, "msg_body": [], "cloud_custom_data": null, "error_code": 10100,
                "error_info": null, "error_category": "blocked_by_callback",
                "extra": {
                    "MsgSeq": 12, "MsgId": "144115233874815003-1670574414-12345", "TopicId": null,
                    "Nested": {"a": [1, {"b": "é\n"}], "c": 1.5e3}, "MsgTime": 1670574414,
                    "big": 123456789012345678901234567890.0
                },
            }),
        );
        assert_eq!(event_json(QUERY, body), expected);
        let q = query(QUERY);
        let Classified::Exception(e) = classify(&q, body, received()).unwrap() else { panic!("not an exception") };
        let text = String::from_utf8(e.to_json()).unwrap();
        assert!(
            text.ends_with(
                r#""extra":{"MsgSeq":12,"MsgId":"144115233874815003-1670574414-12345","TopicId":null,"Nested":{"a":[1,{"b":"\u00e9\n"}],"c":1.5e3},"MsgTime":1670574414,"big":123456789012345678901234567890}}"#
            ),
            "{text}"
        );
    }

    #[test]
    fn multi_element_msg_body_is_verbatim() {
        let body = include_bytes!("../../tests/fixtures/multi_elem.json");
        let q = query(QUERY);
        let Classified::Exception(e) = classify(&q, body, received()).unwrap() else { panic!("not an exception") };
        let text = String::from_utf8(e.to_json()).unwrap();
        let start = body.windows(10).position(|w| w == b"\"MsgBody\":").unwrap() + 10;
        let end = body.windows(13).position(|w| w == b",\"ErrorCode\":").unwrap();
        let msg_body = std::str::from_utf8(&body[start..end]).unwrap();
        assert!(text.contains(&format!("\"msg_body\":{msg_body},")), "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["msg_body"].as_array().unwrap().len(), 4);
        assert_eq!(value["online_only"], true);
        assert_eq!(value["error_category"], "message_too_large");
    }

    #[test]
    fn other_commands_are_classified_without_field_checks() {
        let body = include_bytes!("../../tests/fixtures/other_command.json");
        let q = query(BARE_QUERY);
        match classify(&q, body, received()).unwrap() {
            Classified::Other { command } => assert_eq!(command, "Group.CallbackAfterSendMsg"),
            other => panic!("{other:?}"),
        }
        let q = query("SdkAppid=1400000000&CallbackCommand=State.StateChange");
        match classify(&q, b"{\"Info\":{}}", received()).unwrap() {
            Classified::Other { command } => {
                assert_eq!(command, "State.StateChange");
                assert!(matches!(command, Cow::Borrowed(_)));
            }
            other => panic!("{other:?}"),
        }
        // Still a body: bad JSON and duplicates are refused for every command.
        assert_eq!(body_error("SdkAppid=1400000000&CallbackCommand=State.StateChange", b"[]"), BodyError::NotAnObject);
    }

    #[test]
    fn command_mismatch_and_exact_match() {
        let body = include_bytes!("../../tests/fixtures/doc_sample.json");
        for raw in [
            "SdkAppid=1400000000&CallbackCommand=Group.CallbackAfterSendMsg",
            "SdkAppid=1400000000&CallbackCommand=group.callbacksendmsgexception",
        ] {
            let err = body_error(raw, body);
            assert_eq!(err, BodyError::CommandMismatch, "{raw}");
            assert_eq!((err.status(), err.error_code(), err.outcome_label()), (400, 40015, "command_mismatch"));
        }
        let err = body_error(BARE_QUERY, b"{\"GroupId\":\"g\"}");
        assert_eq!((err.status(), err.error_code(), err.outcome_label()), (400, 40014, "missing_command"));
        // Escaped command in the body still matches the query.
        let escaped =
            br#"{"CallbackCommand":"Group.CallbackSendMsg\u0045xception","GroupId":"g","Type":"T","ErrorCode":1}"#;
        assert_eq!(event_json(QUERY, escaped)["callback_command"], EXCEPTION_COMMAND);
    }

    #[test]
    fn bad_fixtures_give_the_right_error() {
        let cases: [(&[u8], BodyError); 10] = [
            (include_bytes!("../../tests/fixtures/bad_not_object.json"), BodyError::NotAnObject),
            (
                include_bytes!("../../tests/fixtures/bad_duplicate_key.json"),
                BodyError::DuplicateField("GroupId".into()),
            ),
            (include_bytes!("../../tests/fixtures/bad_missing_group_id.json"), BodyError::MissingField("GroupId")),
            (
                include_bytes!("../../tests/fixtures/bad_error_code_float.json"),
                BodyError::InvalidField { field: "ErrorCode", expected: "an integer or numeric string" },
            ),
            (
                include_bytes!("../../tests/fixtures/bad_error_code_too_big.json"),
                BodyError::InvalidField { field: "ErrorCode", expected: "an integer or numeric string" },
            ),
            (
                include_bytes!("../../tests/fixtures/bad_msg_body_object.json"),
                BodyError::InvalidField { field: "MsgBody", expected: "an array or null" },
            ),
            (
                include_bytes!("../../tests/fixtures/bad_online_flag.json"),
                BodyError::InvalidField { field: "OnlineOnlyFlag", expected: "0, 1, true or false" },
            ),
            (
                include_bytes!("../../tests/fixtures/bad_command_type.json"),
                BodyError::InvalidField { field: "CallbackCommand", expected: "a string or null" },
            ),
            (include_bytes!("../../tests/fixtures/bad_truncated.json"), BodyError::InvalidJson(String::new())),
            (include_bytes!("../../tests/fixtures/bad_invalid_utf8.json"), BodyError::InvalidJson(String::new())),
        ];
        for (body, expected) in cases {
            let err = body_error(QUERY, body);
            match expected {
                BodyError::InvalidJson(_) => assert!(matches!(err, BodyError::InvalidJson(_)), "{err:?}"),
                _ => assert_eq!(err, expected),
            }
        }
        assert_eq!(
            body_error(QUERY, include_bytes!("../../tests/fixtures/bad_error_code_float.json")).to_string(),
            "field ErrorCode: expected an integer or numeric string"
        );
    }

    #[test]
    fn required_fields_missing_or_null() {
        for (body, field) in [
            (r#"{"Type":"T","ErrorCode":1}"#, "GroupId"),
            (r#"{"GroupId":null,"Type":"T","ErrorCode":1}"#, "GroupId"),
            (r#"{"GroupId":"g","ErrorCode":1}"#, "Type"),
            (r#"{"GroupId":"g","Type":"T"}"#, "ErrorCode"),
            (r#"{"GroupId":"g","Type":"T","ErrorCode":null}"#, "ErrorCode"),
        ] {
            let err = body_error(QUERY, body.as_bytes());
            assert_eq!(err, BodyError::MissingField(field), "{body}");
            assert_eq!((err.error_code(), err.outcome_label()), (40012, "missing_field"));
        }
    }

    #[test]
    fn wrong_types_are_invalid_field() {
        for (body, field) in [
            (r#"{"GroupId":1,"Type":"T","ErrorCode":1}"#, "GroupId"),
            (r#"{"GroupId":"g","Type":[],"ErrorCode":1}"#, "Type"),
            (r#"{"GroupId":"g","Type":"T","ErrorCode":"x"}"#, "ErrorCode"),
            (r#"{"GroupId":"g","Type":"T","ErrorCode":1,"Random":-1}"#, "Random"),
            (r#"{"GroupId":"g","Type":"T","ErrorCode":1,"EventTime":1.5}"#, "EventTime"),
            (r#"{"GroupId":"g","Type":"T","ErrorCode":1,"EventTime":"99999999999999999999"}"#, "EventTime"),
            (r#"{"GroupId":"g","Type":"T","ErrorCode":1,"From_Account":{}}"#, "From_Account"),
            (r#"{"GroupId":"g","Type":"T","ErrorCode":1,"Operator_Account":true}"#, "Operator_Account"),
            (r#"{"GroupId":"g","Type":"T","ErrorCode":1,"CloudCustomData":1}"#, "CloudCustomData"),
            (r#"{"GroupId":"g","Type":"T","ErrorCode":1,"ErrorInfo":[]}"#, "ErrorInfo"),
            (r#"{"GroupId":"g","Type":"T","ErrorCode":1,"MsgBody":"[]"}"#, "MsgBody"),
        ] {
            let err = body_error(QUERY, body.as_bytes());
            assert!(matches!(err, BodyError::InvalidField { field: f, .. } if f == field), "{body}: {err:?}");
            assert_eq!((err.error_code(), err.outcome_label()), (40013, "invalid_field"));
        }
    }

    #[test]
    fn deep_nesting_anywhere_is_invalid_json() {
        for field in ["x", "MsgBody", "GroupId"] {
            let body = format!(
                r#"{{"GroupId":"g","Type":"T","ErrorCode":1,"{field}":{}{}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            );
            let err = body_error(QUERY, body.as_bytes());
            assert_eq!(err, BodyError::TooDeep { max_depth: super::super::MAX_BODY_DEPTH }, "{field}");
            assert_eq!(err.outcome_label(), "invalid_json");
        }
    }

    #[test]
    fn deepest_accepted_body_keeps_the_event_readable_with_serde_json_defaults() {
        let arrays = super::super::MAX_BODY_DEPTH - 1;
        for field in ["x", "MsgBody"] {
            let body = format!(
                r#"{{"GroupId":"g","Type":"T","ErrorCode":1,"{field}":{}{}}}"#,
                "[".repeat(arrays),
                "]".repeat(arrays)
            );
            let value = event_json(QUERY, body.as_bytes());
            assert_eq!(value["group_id"], "g", "{field}");
        }
    }

    #[test]
    fn event_time_out_of_range_is_null_but_kept_in_ms() {
        for (ms, formatted) in [
            ("0", json!("1970-01-01T00:00:00.000Z")),
            ("-1", json!(null)),
            ("253402300799999", json!("9999-12-31T23:59:59.999Z")),
            ("253402300800000", json!(null)),
            ("9223372036854775807", json!(null)),
            ("-9223372036854775808", json!(null)),
        ] {
            let body = format!(r#"{{"GroupId":"g","Type":"T","ErrorCode":1,"EventTime":{ms}}}"#);
            let event = event_json(QUERY, body.as_bytes());
            assert_eq!(event["event_time"], formatted, "{ms}");
            assert_eq!(event["event_time_ms"].to_string(), ms);
        }
    }

    #[test]
    fn received_at_out_of_range_is_null_not_a_panic() {
        let q = query(QUERY);
        let body = br#"{"GroupId":"g","Type":"T","ErrorCode":1}"#;
        for at in [UNIX_EPOCH - Duration::from_secs(1), UNIX_EPOCH + Duration::from_secs(253_402_300_800)] {
            let Classified::Exception(e) = classify(&q, body, at).unwrap() else { panic!("not an exception") };
            let value: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
            assert_eq!(value["received_at"], json!(null));
        }
    }

    #[test]
    fn query_strings_with_escapes_are_kept_as_sent() {
        let body = include_bytes!("../../tests/fixtures/doc_sample.json");
        let raw = "SdkAppid=1400000000&ClientIP=2001%3Adb8%3A%3A1&OptPlatform=IOS&contenttype=JSON";
        let event = event_json(raw, body);
        assert_eq!(event["client_ip"], "2001:db8::1");
        assert_eq!(event["opt_platform"], "IOS");
    }
}
