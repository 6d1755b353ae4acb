//! The generic `tencent.im.callback/v1` envelope for routed commands other than the exception callback.

use std::borrow::Cow;
use std::time::SystemTime;

use serde_json::value::RawValue;

use super::body::{lenient_integer, BodyFields, Known};
use super::error::BodyError;
use super::event::{event_id, exception_event, millis_to_time, resolve_command, ExceptionEvent, EXCEPTION_COMMAND};
use super::json::JsonObject;
use super::query::AuthenticatedQuery;

/// Value of the envelope's `schema` field and of the record's `schema` header.
pub const SCHEMA_CALLBACK_V1: &str = "tencent.im.callback/v1";

/// An authenticated callback, normalized for publishing.
// As in `Classified`, the variants are moved, not boxed: one allocation per request saved on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Normalized<'a> {
    /// A `Group.CallbackSendMsgException`, normalized into the v1 event (the same as [`super::classify`]).
    Exception(ExceptionEvent<'a>),
    /// Any other command, as the generic envelope; whether to publish it is [`super::route`]'s decision.
    Callback(CallbackEnvelope<'a>),
}

impl Normalized<'_> {
    /// The callback's command.
    pub fn command(&self) -> &str {
        match self {
            Normalized::Exception(event) => event.callback_command(),
            Normalized::Callback(envelope) => envelope.callback_command(),
        }
    }

    /// The event ID (same formula for both: see [`event_id`]).
    pub fn event_id(&self) -> &str {
        match self {
            Normalized::Exception(event) => event.event_id(),
            Normalized::Callback(envelope) => envelope.event_id(),
        }
    }
}

/// Like [`super::classify`], but every other command becomes a [`CallbackEnvelope`] instead of being
/// dropped. Errors are the same (bad JSON, duplicates, command missing or mismatched, and for the exception
/// command its field checks); the envelope itself never fails: fields it lifts out of the body are taken
/// when they have the expected type and are null otherwise, the body keeping them verbatim either way.
pub fn normalize<'a>(
    query: &'a AuthenticatedQuery<'a>,
    body: &'a [u8],
    received_at: SystemTime,
) -> Result<Normalized<'a>, BodyError> {
    let fields = BodyFields::parse(body)?;
    let command = resolve_command(query, &fields)?;
    if command == EXCEPTION_COMMAND {
        return exception_event(query, body, fields, command, received_at).map(Normalized::Exception);
    }
    // The body parsed as one object, so this cannot fail; it borrows the object without surrounding whitespace.
    let raw_body: &'a RawValue = serde_json::from_slice(body).map_err(|e| BodyError::InvalidJson(e.to_string()))?;
    let event_time_ms = fields.integer::<i64>(Known::EventTime, "").ok().flatten().or_else(|| {
        // MsgTime is in seconds (shared doc §5; C2C/Group message callbacks), EventTime in milliseconds.
        fields.extra_raw("MsgTime").and_then(lenient_integer::<i64>).and_then(|secs| secs.checked_mul(1000))
    });
    Ok(Normalized::Callback(CallbackEnvelope {
        event_id: event_id(query.sdk_app_id, body),
        sdk_app_id: query.sdk_app_id,
        callback_command: command,
        received_at,
        client_ip: query.client_ip.as_deref(),
        opt_platform: query.opt_platform.as_deref(),
        group_id: fields.string(Known::GroupId).ok().flatten(),
        from_account: fields.string(Known::FromAccount).ok().flatten(),
        event_time_ms,
        body: raw_body,
    }))
}

/// A callback of any command but the exception one, as the `tencent.im.callback/v1` envelope.
#[derive(Debug)]
pub struct CallbackEnvelope<'a> {
    event_id: String,
    sdk_app_id: u64,
    callback_command: Cow<'a, str>,
    received_at: SystemTime,
    client_ip: Option<&'a str>,
    opt_platform: Option<&'a str>,
    group_id: Option<Cow<'a, str>>,
    from_account: Option<Cow<'a, str>>,
    event_time_ms: Option<i64>,
    body: &'a RawValue,
}

impl CallbackEnvelope<'_> {
    /// `event_id` (also the record's `event_id` header).
    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    /// The app the callback belongs to.
    pub fn sdk_app_id(&self) -> u64 {
        self.sdk_app_id
    }

    /// `CallbackCommand`.
    pub fn callback_command(&self) -> &str {
        &self.callback_command
    }

    /// `GroupId`, if the body holds it as a string.
    pub fn group_id(&self) -> Option<&str> {
        self.group_id.as_deref()
    }

    /// `From_Account`, if the body holds it as a string.
    pub fn from_account(&self) -> Option<&str> {
        self.from_account.as_deref()
    }

    /// `EventTime` (milliseconds), else `MsgTime` (seconds) × 1000, if either is an integer or numeric string.
    pub fn event_time_ms(&self) -> Option<i64> {
        self.event_time_ms
    }

    /// The body's JSON object, byte for byte (without whitespace around it).
    pub fn body(&self) -> &str {
        self.body.get()
    }

    /// Suggested Kafka record key: `group_id`, else `from_account`, else `event_id` (first non-empty), so that
    /// one group's (or one user's) callbacks stay in order on one partition.
    pub fn record_key(&self) -> &str {
        [self.group_id(), self.from_account()].into_iter().flatten().find(|s| !s.is_empty()).unwrap_or(&self.event_id)
    }

    /// The envelope as `tencent.im.callback/v1` JSON, fields in schema order.
    pub fn to_json(&self) -> Vec<u8> {
        let mut json = JsonObject::with_capacity(384 + self.body.get().len());
        json.field("schema", SCHEMA_CALLBACK_V1)
            .field("event_id", &self.event_id)
            .field("sdk_app_id", &self.sdk_app_id)
            .field("callback_command", &self.callback_command)
            .field("received_at", &self.received_at)
            .field("client_ip", &self.client_ip)
            .field("opt_platform", &self.opt_platform)
            .field("group_id", &self.group_id)
            .field("from_account", &self.from_account)
            .field("event_time_ms", &self.event_time_ms)
            .field("event_time", &self.event_time_ms.and_then(millis_to_time))
            .field("body", self.body);
        json.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::super::event::{classify, Classified};
    use super::*;

    const QUERY: &str = "SdkAppid=1400000000&contenttype=json&ClientIP=10.0.0.1&OptPlatform=iOS";

    use super::super::test_support::{query, received};

    fn envelope_json(raw_query: &str, body: &[u8]) -> serde_json::Value {
        let q = query(raw_query);
        match normalize(&q, body, received()).unwrap() {
            Normalized::Callback(e) => serde_json::from_slice(&e.to_json()).unwrap(),
            other => panic!("not an envelope: {other:?}"),
        }
    }

    fn expected(body: &[u8], lifted: serde_json::Value) -> serde_json::Value {
        let mut expected = json!({
            "schema": "tencent.im.callback/v1",
            "event_id": event_id(1_400_000_000, body),
            "sdk_app_id": 1_400_000_000u64,
            "received_at": "2022-12-09T08:26:55.007Z",
            "client_ip": "10.0.0.1",
            "opt_platform": "iOS",
            "body": serde_json::from_slice::<serde_json::Value>(body).unwrap(),
        });
        for (k, v) in lifted.as_object().unwrap() {
            expected[k] = v.clone();
        }
        expected
    }

    #[test]
    fn group_after_send_msg_envelope_in_schema_order_with_verbatim_body() {
        let body = include_bytes!("../../tests/fixtures/group_after_send_msg.json");
        let q = query(QUERY);
        let Normalized::Callback(e) = normalize(&q, body, received()).unwrap() else { panic!("not an envelope") };
        assert_eq!(e.callback_command(), "Group.CallbackAfterSendMsg");
        assert_eq!(e.sdk_app_id(), 1_400_000_000);
        assert_eq!(e.group_id(), Some("@TGS#2J4SZEAEL"));
        assert_eq!(e.from_account(), Some("jared"));
        assert_eq!(e.event_time_ms(), Some(1_670_574_414_123));
        assert_eq!(e.record_key(), "@TGS#2J4SZEAEL");
        assert_eq!(e.event_id(), event_id(1_400_000_000, body));
        // printf '1400000000\n' | cat - tests/fixtures/group_after_send_msg.json | sha256sum
        assert_eq!(e.event_id(), "862cf7c8c80cb8916da2f42920c94fb05ba8c76e153b7dbb434f184d3ecc9720");
        let text = String::from_utf8(e.to_json()).unwrap();
        let body_text = std::str::from_utf8(body).unwrap().trim_end();
        assert_eq!(e.body(), body_text);
        assert_eq!(
            text,
            format!(
                concat!(
                    r#"{{"schema":"tencent.im.callback/v1","event_id":"{}","sdk_app_id":1400000000,"#,
                    r#""callback_command":"Group.CallbackAfterSendMsg","received_at":"2022-12-09T08:26:55.007Z","#,
                    r#""client_ip":"10.0.0.1","opt_platform":"iOS","group_id":"@TGS#2J4SZEAEL","from_account":"jared","#,
                    r#""event_time_ms":1670574414123,"event_time":"2022-12-09T08:26:54.123Z","body":{}}}"#
                ),
                e.event_id(),
                body_text
            )
        );
    }

    #[test]
    fn c2c_msg_time_is_seconds() {
        let body = include_bytes!("../../tests/fixtures/c2c_after_send_msg.json");
        let lifted = json!({
            "callback_command": "C2C.CallbackAfterSendMsg", "group_id": null, "from_account": "jared",
            "event_time_ms": 1_557_481_126_000u64, "event_time": "2019-05-10T09:38:46.000Z",
        });
        assert_eq!(envelope_json(QUERY, body), expected(body, lifted));
    }

    #[test]
    fn other_fixtures() {
        for (name, body, lifted) in [
            (
                "state_change",
                &include_bytes!("../../tests/fixtures/state_change.json")[..],
                json!({"callback_command": "State.StateChange", "group_id": null, "from_account": null,
                       "event_time_ms": 1_670_574_414_123u64, "event_time": "2022-12-09T08:26:54.123Z"}),
            ),
            (
                "group_before_send_msg",
                include_bytes!("../../tests/fixtures/group_before_send_msg.json"),
                json!({"callback_command": "Group.CallbackBeforeSendMsg", "group_id": "@TGS#_@TGS#cQVLVHIM62CJ",
                       "from_account": "jared", "event_time_ms": 1_670_574_414_123u64,
                       "event_time": "2022-12-09T08:26:54.123Z"}),
            ),
            (
                "sns_prev_friend_add",
                include_bytes!("../../tests/fixtures/sns_prev_friend_add.json"),
                json!({"callback_command": "Sns.CallbackPrevFriendAdd", "group_id": null, "from_account": "id",
                       "event_time_ms": 1_670_574_414_123u64, "event_time": "2022-12-09T08:26:54.123Z"}),
            ),
            (
                // Lifted fields of the wrong type are null, and the body keeps them; MsgBody is not checked.
                "other_command",
                include_bytes!("../../tests/fixtures/other_command.json"),
                json!({"callback_command": "Group.CallbackAfterSendMsg", "group_id": null, "from_account": "jared",
                       "event_time_ms": 1_670_574_414_000u64, "event_time": "2022-12-09T08:26:54.000Z"}),
            ),
        ] {
            assert_eq!(envelope_json(QUERY, body), expected(body, lifted), "{name}");
        }
    }

    #[test]
    fn event_time_beats_msg_time_and_bad_values_are_null() {
        for (fields, ms, formatted) in [
            (
                r#""EventTime":"1670574414123","MsgTime":1"#,
                json!(1_670_574_414_123u64),
                json!("2022-12-09T08:26:54.123Z"),
            ),
            (
                r#""EventTime":1.5,"MsgTime":"1670574414""#,
                json!(1_670_574_414_000u64),
                json!("2022-12-09T08:26:54.000Z"),
            ),
            (r#""EventTime":null,"MsgTime":null"#, json!(null), json!(null)),
            (r#""MsgTime":true"#, json!(null), json!(null)),
            (r#""MsgTime":9223372036854775"#, json!(9_223_372_036_854_775_000u64), json!(null)),
            (r#""MsgTime":9223372036854776"#, json!(null), json!(null)),
            (r#""MsgTime":-1"#, json!(-1000), json!(null)),
            (r#""EventTime":"-5""#, json!(-5), json!(null)),
            (r#""EventTime":99999999999999999999"#, json!(null), json!(null)),
        ] {
            let body = format!(r#"{{"CallbackCommand":"X.Y",{fields}}}"#);
            let value = envelope_json(QUERY, body.as_bytes());
            assert_eq!((&value["event_time_ms"], &value["event_time"]), (&ms, &formatted), "{fields}");
        }
    }

    #[test]
    fn lifted_strings_of_the_wrong_type_are_null() {
        let body = br#"{"CallbackCommand":"X.Y","GroupId":["g"],"From_Account":{"a":1}}"#;
        let q = query(QUERY);
        let Normalized::Callback(e) = normalize(&q, body, received()).unwrap() else { panic!("not an envelope") };
        assert_eq!((e.group_id(), e.from_account()), (None, None));
        assert_eq!(e.record_key(), e.event_id());
        let body = br#"{"CallbackCommand":"X.Y","GroupId":"","From_Account":"u\u0031"}"#;
        let Normalized::Callback(e) = normalize(&q, body, received()).unwrap() else { panic!("not an envelope") };
        assert_eq!((e.group_id(), e.from_account(), e.record_key()), (Some(""), Some("u1"), "u1"));
    }

    #[test]
    fn command_only_in_query_and_no_optional_query_parameters() {
        let body = b" \n{ \"Info\" : {} }\r\n\t";
        let value = envelope_json("SdkAppid=1400000000&CallbackCommand=State.StateChange", body);
        assert_eq!(value["callback_command"], "State.StateChange");
        assert_eq!((&value["client_ip"], &value["opt_platform"]), (&json!(null), &json!(null)));
        assert_eq!(value["event_id"], event_id(1_400_000_000, body));
        let q = query("SdkAppid=1400000000&CallbackCommand=State.StateChange");
        let Normalized::Callback(e) = normalize(&q, body, received()).unwrap() else { panic!("not an envelope") };
        assert_eq!(e.body(), "{ \"Info\" : {} }");
        assert!(String::from_utf8(e.to_json()).unwrap().ends_with(r#","body":{ "Info" : {} }}"#));
    }

    #[test]
    fn body_errors_are_the_same_as_classify() {
        let q = query("SdkAppid=1400000000&CallbackCommand=State.StateChange");
        for body in
            [&b"[]"[..], b"{", b"{\"a\":1,\"a\":2}", b"{\"CallbackCommand\":\"X.Y\"}", b"{\"CallbackCommand\":1}"]
        {
            let expected = classify(&q, body, received()).unwrap_err();
            assert_eq!(normalize(&q, body, received()).unwrap_err(), expected, "{body:?}");
        }
        let bare = query("SdkAppid=1400000000");
        assert_eq!(normalize(&bare, b"{}", received()).unwrap_err(), BodyError::MissingCommand);
    }

    #[test]
    fn exception_command_gives_the_same_v1_event_as_classify() {
        let q = query(QUERY);
        for body in [
            &include_bytes!("../../tests/fixtures/doc_sample.json")[..],
            include_bytes!("../../tests/fixtures/unknown_fields.json"),
            include_bytes!("../../tests/fixtures/nulls.json"),
        ] {
            let Classified::Exception(a) = classify(&q, body, received()).unwrap() else { panic!("not an exception") };
            let normalized = normalize(&q, body, received()).unwrap();
            assert_eq!(normalized.command(), EXCEPTION_COMMAND);
            assert_eq!(normalized.event_id(), a.event_id());
            let Normalized::Exception(b) = normalized else { panic!("not an exception") };
            assert_eq!(a.to_json(), b.to_json());
        }
        let err = normalize(&q, include_bytes!("../../tests/fixtures/bad_missing_group_id.json"), received());
        assert_eq!(err.unwrap_err(), BodyError::MissingField("GroupId"));
    }

    #[test]
    fn classified_and_normalized_name_their_command() {
        let q = query(QUERY);
        let body = include_bytes!("../../tests/fixtures/state_change.json");
        assert_eq!(classify(&q, body, received()).unwrap().command(), "State.StateChange");
        let normalized = normalize(&q, body, received()).unwrap();
        assert_eq!(normalized.command(), "State.StateChange");
        assert_eq!(normalized.event_id(), event_id(1_400_000_000, body));
        let body = include_bytes!("../../tests/fixtures/doc_sample.json");
        assert_eq!(classify(&q, body, received()).unwrap().command(), EXCEPTION_COMMAND);
    }

    #[test]
    fn deepest_accepted_body_stays_readable_with_serde_json_defaults() {
        let depth = super::super::MAX_BODY_DEPTH - 1;
        let body = format!(r#"{{"CallbackCommand":"X.Y","x":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
        let value = envelope_json(QUERY, body.as_bytes());
        assert_eq!(value["callback_command"], "X.Y");
    }

    #[test]
    fn received_at_out_of_range_is_null() {
        let q = query(QUERY);
        let body = br#"{"CallbackCommand":"X.Y"}"#;
        let Normalized::Callback(e) = normalize(&q, body, UNIX_EPOCH - Duration::from_secs(1)).unwrap() else {
            panic!("not an envelope")
        };
        let value: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(value["received_at"], json!(null));
    }
}
