//! Property tests: normalization never panics on arbitrary input, and every field it keeps survives the round trip.

use std::fmt::Debug;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use serde::de::IgnoredAny;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::*;

const APP: u64 = 1_400_000_000;
const SIGNED_APP: u64 = 1_400_000_001;
const TOKEN: &str = "xxxxyyyy";
const NOW: i64 = 1_669_872_112;
const RECEIVED_MS: u64 = 1_670_574_415_007;
/// First instant that is not formatted (year 10000), in milliseconds.
const RFC3339_LIMIT_MS: i64 = 253_402_300_800_000;

const KNOWN_FIELDS: [&str; 12] = [
    "CallbackCommand",
    "GroupId",
    "Type",
    "From_Account",
    "Operator_Account",
    "Random",
    "OnlineOnlyFlag",
    "MsgBody",
    "CloudCustomData",
    "ErrorCode",
    "ErrorInfo",
    "EventTime",
];

const QUERY_PARAMS: [&str; 7] =
    ["SdkAppid", "CallbackCommand", "contenttype", "ClientIP", "OptPlatform", "Sign", "RequestTime"];

fn registry() -> AppRegistry {
    AppRegistry::new([(APP, vec![]), (SIGNED_APP, vec![TOKEN.to_owned()])], Duration::from_secs(60))
}

fn received() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(RECEIVED_MS)
}

/// The event ID computed independently of `event_id`.
fn expected_event_id(sdk_app_id: u64, body: &[u8]) -> String {
    hex::encode(Sha256::new().chain_update(sdk_app_id.to_string()).chain_update(b"\n").chain_update(body).finalize())
}

fn expected_time(ms: Option<i64>) -> Value {
    match ms {
        Some(ms) if (0..RFC3339_LIMIT_MS).contains(&ms) => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string().into()
        }
        _ => Value::Null,
    }
}

fn received_at() -> Value {
    expected_time(Some(RECEIVED_MS as i64))
}

fn encode_query(pairs: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        query.append_pair(name, value);
    }
    query.finish()
}

/// Every outcome label a body error can have.
fn outcome_labels() -> Vec<&'static str> {
    let errors = [
        BodyError::InvalidJson(String::new()),
        BodyError::DuplicateField("x".into()),
        BodyError::MissingField("GroupId"),
        BodyError::InvalidField { field: "GroupId", expected: "x" },
        BodyError::MissingCommand,
        BodyError::CommandMismatch,
    ];
    errors.iter().map(BodyError::outcome_label).collect()
}

/// Checks what every produced event must satisfy, whatever the input: valid JSON, the schema, the event ID.
fn check_output(json: &[u8], schema: &str, sdk_app_id: u64, body: &[u8]) {
    #[derive(serde::Deserialize)]
    struct Head {
        schema: String,
        event_id: String,
        sdk_app_id: u64,
    }
    // Every record parses with serde_json's defaults: no lone surrogate, no number beyond f64 kept verbatim.
    serde_json::from_slice::<IgnoredAny>(json).expect("output is JSON");
    if let Err(err) = serde_json::from_slice::<Value>(json) {
        panic!("a record serde_json::Value cannot read: {err}: {}", String::from_utf8_lossy(json));
    }
    let head: Head = serde_json::from_slice(json).expect("output has the head fields");
    assert_eq!(head.schema, schema);
    assert_eq!(head.sdk_app_id, sdk_app_id);
    assert_eq!(head.event_id, expected_event_id(sdk_app_id, body));
    assert!(
        head.event_id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) && head.event_id.len() == 64
    );
}

/// Runs a request through parse → authenticate → classify / normalize → JSON, asserting the invariants.
fn check_request(raw_query: &str, body: &[u8], now: i64) {
    let Ok(query) = RawQuery::parse(raw_query) else { return };
    let Ok(auth) = registry().authenticate(query, now) else { return };
    let classified = classify(&auth, body, received());
    let normalized = normalize(&auth, body, received());
    match (classified, normalized) {
        (Err(a), Err(b)) => {
            assert_eq!(a, b);
            assert!(outcome_labels().contains(&a.outcome_label()), "{a:?}");
            assert!(a.to_string().len() < 1024, "bounded error text: {a}");
        }
        (Ok(Classified::Exception(a)), Ok(Normalized::Exception(b))) => {
            let json = a.to_json();
            assert_eq!(json, b.to_json());
            check_output(&json, SCHEMA_V1, auth.sdk_app_id, body);
        }
        (Ok(Classified::Other { command }), Ok(Normalized::Callback(envelope))) => {
            assert_eq!(command, envelope.callback_command());
            assert_ne!(command, EXCEPTION_COMMAND);
            check_output(&envelope.to_json(), SCHEMA_CALLBACK_V1, auth.sdk_app_id, body);
            assert!(COMMAND_LABELS.contains(&command_label(&command)));
        }
        (a, b) => panic!("classify and normalize disagree: {a:?} / {b:?}"),
    }
}

/// Any JSON value: every type, arbitrary strings, numbers across the i64/u64/f64 ranges, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A JSON value's text, compact or pretty (pretty puts whitespace inside, which must survive verbatim).
fn value_text(value: &Value, pretty: bool) -> String {
    if pretty {
        serde_json::to_string_pretty(value).unwrap()
    } else {
        serde_json::to_string(value).unwrap()
    }
}

fn string_text(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Value texts for the never-panic property: any JSON value, plus number and string shapes that stress the
/// lenient parsers (beyond i64/u64, beyond f64, floats, numeric strings, signs).
fn any_value_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (json_value(), any::<bool>()).prop_map(|(v, pretty)| value_text(&v, pretty)),
        1 => prop::sample::select(vec![
            "1e999", "-1e999", "123456789012345678901234567890", "-9223372036854775809", "18446744073709551616",
            "1.5", "1.0", "-0", "0", "1", "2", "\"1\"", "\"0\"", "\"+5\"", "\"-5\"", "\" 1\"", "\"1e3\"", "true",
            "\"\\ud800\"", "\"\\u0000\"", "[]", "{}", "null",
        ])
        .prop_map(str::to_owned),
        1 => any::<i128>().prop_map(|n| format!("\"{n}\"")),
    ]
}

fn any_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KNOWN_FIELDS.to_vec()).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["MsgTime", "MsgSeq", "TopicId", "To_Account"]).prop_map(str::to_owned),
        2 => any::<String>(),
    ]
}

fn any_command() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(EXCEPTION_COMMAND.to_owned()),
        prop::sample::select(COMMAND_LABELS.to_vec()).prop_map(str::to_owned),
        any::<String>(),
    ]
}

/// Query strings built from the known parameter names (repeated, empty, percent-encoded, unknown ones too),
/// often after a valid prefix so that authentication succeeds some of the time.
fn any_query() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        4 => prop::sample::select(QUERY_PARAMS.to_vec()).prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    let value = prop_oneof![
        Just(APP.to_string()),
        Just(SIGNED_APP.to_string()),
        Just(EXCEPTION_COMMAND.to_owned()),
        Just(NOW.to_string()),
        Just(sign(TOKEN, &NOW.to_string())),
        any::<String>(),
    ];
    let prefix = prop::sample::select(vec![
        String::new(),
        format!("SdkAppid={APP}"),
        format!("SdkAppid={SIGNED_APP}&Sign={}&RequestTime={NOW}", sign(TOKEN, &NOW.to_string())),
        format!(
            "?SdkAppid={APP}&CallbackCommand={EXCEPTION_COMMAND}&contenttype=json&ClientIP=10.0.0.1&OptPlatform=iOS"
        ),
    ]);
    prop_oneof![
        4 => (prefix, prop::collection::vec((name, value), 0..6)).prop_map(|(prefix, pairs)| {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let rest = encode_query(&pairs);
            match (prefix.is_empty(), rest.is_empty()) {
                (true, _) => rest,
                (false, true) => prefix,
                (false, false) => format!("{prefix}&{rest}"),
            }
        }),
        1 => "[a-zA-Z0-9%&=+?.]{0,64}",
        1 => any::<String>(),
    ]
}

/// A change to a valid body's list of entries, at an index taken modulo its length.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(prop::sample::Index, String),
    Remove(prop::sample::Index),
    Duplicate(prop::sample::Index),
    Insert(prop::sample::Index, String, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let index = any::<prop::sample::Index>;
    prop_oneof![
        3 => (index(), any_value_text()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => index().prop_map(Mutation::Remove),
        1 => index().prop_map(Mutation::Duplicate),
        1 => (index(), any_key(), any_value_text()).prop_map(|(i, k, v)| Mutation::Insert(i, k, v)),
    ]
}

/// A valid exception body with a few entries replaced by arbitrary values, removed, duplicated or added.
fn mutated_exception_body() -> impl Strategy<Value = Vec<u8>> {
    (exception_input(), prop::collection::vec(mutation(), 0..3)).prop_map(|(input, mutations)| {
        let mut entries: Vec<String> = input.entries(true).into_iter().map(|(_, e)| e).collect();
        for mutation in mutations {
            let len = entries.len();
            match mutation {
                Mutation::Replace(i, value) => {
                    let entry = &mut entries[i.index(len)];
                    // Entries are `"key":value`: the value starts after the key string and the colon.
                    let mut key = serde_json::Deserializer::from_str(entry).into_iter::<String>();
                    key.next();
                    let value_at = key.byte_offset() + 1;
                    entry.replace_range(value_at.., &value);
                }
                Mutation::Remove(i) => {
                    entries.remove(i.index(len));
                }
                Mutation::Duplicate(i) => entries.push(entries[i.index(len)].clone()),
                Mutation::Insert(i, key, value) => {
                    entries.insert(i.index(len + 1), format!("{}:{value}", string_text(&key)))
                }
            }
            if entries.is_empty() {
                break;
            }
        }
        format!("{{{}}}", entries.join(",")).into_bytes()
    })
}

/// An object body: a mutated valid exception body, or one assembled from arbitrary keys and value texts
/// (duplicates possible) with maybe a command.
fn any_object_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![1 => assembled_object_body(), 1 => mutated_exception_body()]
}

fn assembled_object_body() -> impl Strategy<Value = Vec<u8>> {
    let entries = prop::collection::vec((any_key(), any_value_text()), 0..12);
    let command = prop::option::of(any_command());
    (entries, command, any::<bool>()).prop_map(|(entries, command, command_first)| {
        let mut parts: Vec<String> = entries.iter().map(|(k, v)| format!("{}:{v}", string_text(k))).collect();
        if let Some(command) = command {
            let entry = format!("\"CallbackCommand\":{}", string_text(&command));
            if command_first {
                parts.insert(0, entry);
            } else {
                parts.push(entry);
            }
        }
        format!("{{{}}}", parts.join(",")).into_bytes()
    })
}

/// A field that may be absent, `null`, or set.
#[derive(Debug, Clone)]
enum Slot<T> {
    Absent,
    Null,
    Set(T),
}

impl<T> Slot<T> {
    fn set(&self) -> Option<&T> {
        match self {
            Slot::Set(v) => Some(v),
            _ => None,
        }
    }

    /// The body entry for `key`: none, `key:null`, or `key:text(v)`.
    fn entry(&self, key: &str, text: impl Fn(&T) -> String) -> Option<String> {
        match self {
            Slot::Absent => None,
            Slot::Null => Some(format!("\"{key}\":null")),
            Slot::Set(v) => Some(format!("\"{key}\":{}", text(v))),
        }
    }
}

fn slot<T: Debug + Clone + 'static>(value: impl Strategy<Value = T> + 'static) -> BoxedStrategy<Slot<T>> {
    prop_oneof![1 => Just(Slot::Absent), 1 => Just(Slot::Null), 3 => value.prop_map(Slot::Set)].boxed()
}

/// An integer sent as a JSON number or as a numeric string.
fn int_text<T: ToString>((n, as_string): &(T, bool)) -> String {
    if *as_string {
        format!("\"{}\"", n.to_string())
    } else {
        n.to_string()
    }
}

/// Unknown fields with distinct keys that are not known fields, each value compact or pretty.
fn extra_fields() -> impl Strategy<Value = Vec<(String, Value, bool)>> {
    let key = prop_oneof![
        1 => prop::sample::select(vec!["MsgTime", "MsgSeq", "TopicId", "MsgId"]).prop_map(str::to_owned),
        3 => any::<String>(),
    ];
    prop::collection::vec((key, json_value(), any::<bool>()), 0..6).prop_map(|fields| {
        let mut seen = Vec::new();
        fields
            .into_iter()
            .filter(|(k, _, _)| {
                let fresh = !KNOWN_FIELDS.contains(&k.as_str()) && !seen.contains(k);
                seen.push(k.clone());
                fresh
            })
            .collect()
    })
}

/// Where `CallbackCommand` is sent: body only, query only, or both.
#[derive(Debug, Clone, Copy)]
enum CommandAt {
    Body,
    Query,
    Both,
}

fn command_at() -> impl Strategy<Value = CommandAt> {
    prop_oneof![Just(CommandAt::Body), Just(CommandAt::Query), Just(CommandAt::Both)]
}

/// The query parameters every round trip sends, as sent.
#[derive(Debug, Clone)]
struct QueryInput {
    sdk_app_id: u64,
    client_ip: Option<String>,
    opt_platform: Option<String>,
    command_at: CommandAt,
}

fn query_input() -> impl Strategy<Value = QueryInput> {
    let non_empty = || prop::option::of(any::<String>().prop_filter("empty means absent", |s| !s.is_empty()));
    (any::<u64>(), non_empty(), non_empty(), command_at()).prop_map(
        |(sdk_app_id, client_ip, opt_platform, command_at)| QueryInput {
            sdk_app_id,
            client_ip,
            opt_platform,
            command_at,
        },
    )
}

impl QueryInput {
    fn raw(&self, command: &str) -> String {
        let sdk_app_id = self.sdk_app_id.to_string();
        let mut pairs = vec![("SdkAppid", sdk_app_id.as_str()), ("contenttype", "json")];
        if !matches!(self.command_at, CommandAt::Body) {
            pairs.push(("CallbackCommand", command));
        }
        if let Some(ip) = &self.client_ip {
            pairs.push(("ClientIP", ip));
        }
        if let Some(platform) = &self.opt_platform {
            pairs.push(("OptPlatform", platform));
        }
        encode_query(&pairs)
    }

    fn registry(&self) -> AppRegistry {
        AppRegistry::new([(self.sdk_app_id, vec![])], Duration::from_secs(60))
    }

    fn command_in_body(&self) -> bool {
        !matches!(self.command_at, CommandAt::Query)
    }

    fn check(&self, event: &Value) {
        assert_eq!(event["sdk_app_id"], Value::from(self.sdk_app_id));
        assert_eq!(event["client_ip"], self.client_ip.clone().map_or(Value::Null, Value::String));
        assert_eq!(event["opt_platform"], self.opt_platform.clone().map_or(Value::Null, Value::String));
        assert_eq!(event["received_at"], received_at());
    }
}

/// A valid exception callback body, field by field, with every representation the parser accepts.
#[derive(Debug, Clone)]
struct ExceptionInput {
    group_id: String,
    group_type: String,
    from_account: Slot<String>,
    operator_account: Slot<String>,
    random: Slot<(u64, bool)>,
    /// The flag, and its representation: 0/1, false/true, "0"/"1".
    online_only: Slot<(bool, u8)>,
    msg_body: Slot<(Vec<Value>, bool)>,
    cloud_custom_data: Slot<String>,
    error_code: (i64, bool),
    error_info: Slot<String>,
    event_time: Slot<(i64, bool)>,
    extra: Vec<(String, Value, bool)>,
}

fn exception_input() -> impl Strategy<Value = ExceptionInput> {
    let error_code = prop_oneof![
        any::<i64>(),
        prop::sample::select(vec![10023i64, 80001, 80002, 10017, 10007, 10010, 10003, 10016, 10150, 10002, 0, -1]),
    ];
    let event_time = prop_oneof![any::<i64>(), 0..RFC3339_LIMIT_MS, -1i64..=0, RFC3339_LIMIT_MS - 1..=RFC3339_LIMIT_MS];
    (
        (any::<String>(), any::<String>(), slot(any::<String>()), slot(any::<String>())),
        (slot((any::<u64>(), any::<bool>())), slot((any::<bool>(), 0u8..3))),
        (slot((prop::collection::vec(json_value(), 0..4), any::<bool>())), slot(any::<String>())),
        ((error_code, any::<bool>()), slot(any::<String>()), slot((event_time, any::<bool>())), extra_fields()),
    )
        .prop_map(
            |(
                (group_id, group_type, from_account, operator_account),
                (random, online_only),
                (msg_body, cloud_custom_data),
                (error_code, error_info, event_time, extra),
            )| ExceptionInput {
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
                event_time,
                extra,
            },
        )
}

impl ExceptionInput {
    /// Body entries: known fields in a fixed order, then the unknown ones (the order is shuffled by the caller).
    fn entries(&self, command_in_body: bool) -> Vec<(Option<&str>, String)> {
        let s = |v: &String| string_text(v);
        let mut entries: Vec<(Option<&str>, String)> = Vec::new();
        let mut known = |entry: Option<String>| entries.extend(entry.map(|e| (None, e)));
        if command_in_body {
            known(Some(format!("\"CallbackCommand\":{}", string_text(EXCEPTION_COMMAND))));
        }
        known(Some(format!("\"GroupId\":{}", s(&self.group_id))));
        known(Some(format!("\"Type\":{}", s(&self.group_type))));
        known(self.from_account.entry("From_Account", s));
        known(self.operator_account.entry("Operator_Account", s));
        known(self.random.entry("Random", int_text));
        known(self.online_only.entry("OnlineOnlyFlag", |(flag, repr)| match (repr, flag) {
            (0, f) => u8::from(*f).to_string(),
            (1, f) => f.to_string(),
            (_, f) => format!("\"{}\"", u8::from(*f)),
        }));
        known(self.msg_body.entry("MsgBody", |(elems, pretty)| value_text(&Value::Array(elems.clone()), *pretty)));
        known(self.cloud_custom_data.entry("CloudCustomData", s));
        known(Some(format!("\"ErrorCode\":{}", int_text(&self.error_code))));
        known(self.error_info.entry("ErrorInfo", s));
        known(self.event_time.entry("EventTime", int_text));
        for (key, value, pretty) in &self.extra {
            entries.push((Some(key), format!("{}:{}", string_text(key), value_text(value, *pretty))));
        }
        entries
    }

    fn check(&self, event: &Value, text: &str, body: &[u8], extra_in_body_order: &[&str], sdk_app_id: u64) {
        let opt = |slot: &Slot<String>| slot.set().cloned().map_or(Value::Null, Value::String);
        assert_eq!(event["schema"], SCHEMA_V1);
        assert_eq!(event["event_id"], expected_event_id(sdk_app_id, body));
        assert_eq!(event["callback_command"], EXCEPTION_COMMAND);
        assert_eq!(event["group_id"], self.group_id);
        assert_eq!(event["group_type"], self.group_type);
        assert_eq!(event["from_account"], opt(&self.from_account));
        assert_eq!(event["operator_account"], opt(&self.operator_account));
        assert_eq!(event["random"], self.random.set().map_or(Value::Null, |(n, _)| Value::from(*n)));
        assert_eq!(event["online_only"], self.online_only.set().map_or(Value::Null, |(f, _)| Value::Bool(*f)));
        let msg_body =
            self.msg_body.set().map_or_else(|| "[]".to_owned(), |(v, p)| value_text(&Value::Array(v.clone()), *p));
        assert!(text.contains(&format!(",\"msg_body\":{msg_body},\"cloud_custom_data\":")), "msg_body verbatim");
        assert_eq!(event["cloud_custom_data"], opt(&self.cloud_custom_data));
        assert_eq!(event["error_code"], self.error_code.0);
        assert_eq!(event["error_info"], opt(&self.error_info));
        assert_eq!(event["error_category"], ErrorCategory::from_code(self.error_code.0).as_str());
        let event_time_ms = self.event_time.set().map(|(ms, _)| *ms);
        assert_eq!(event["event_time_ms"], event_time_ms.map_or(Value::Null, Value::from));
        assert_eq!(event["event_time"], expected_time(event_time_ms));
        let extra: Vec<String> = extra_in_body_order
            .iter()
            .map(|key| {
                let (_, value, pretty) = self.extra.iter().find(|(k, _, _)| k == key).unwrap();
                format!("{}:{}", string_text(key), value_text(value, *pretty))
            })
            .collect();
        assert!(text.ends_with(&format!(",\"extra\":{{{}}}}}", extra.join(","))), "extra verbatim, in body order");
    }
}

/// A body of some other command: the lifted fields with any JSON type, plus arbitrary other fields.
#[derive(Debug, Clone)]
struct CallbackInput {
    command: String,
    group_id: Slot<Value>,
    from_account: Slot<Value>,
    event_time: Slot<Value>,
    msg_time: Slot<Value>,
    others: Vec<(String, Value, bool)>,
}

fn callback_input() -> impl Strategy<Value = CallbackInput> {
    let command = prop_oneof![
        prop::sample::select(COMMAND_LABELS.to_vec()).prop_map(str::to_owned),
        "[A-Za-z0-9_.]{1,40}",
        any::<String>(),
    ]
    // Empty counts as absent in the query.
    .prop_filter("a command other than the exception one", |c| !c.is_empty() && c != EXCEPTION_COMMAND);
    let text = || prop_oneof![2 => any::<String>().prop_map(Value::String), 1 => json_value()];
    let time = || {
        prop_oneof![
            2 => any::<i64>().prop_map(Value::from),
            1 => (0..RFC3339_LIMIT_MS / 1000).prop_map(Value::from),
            1 => any::<i64>().prop_map(|n| Value::String(n.to_string())),
            1 => json_value(),
        ]
    };
    let others = prop::collection::vec((any_key(), json_value(), any::<bool>()), 0..6).prop_map(|fields| {
        let mut seen = Vec::new();
        fields
            .into_iter()
            .filter(|(k, _, _)| {
                let lifted =
                    ["CallbackCommand", "GroupId", "From_Account", "EventTime", "MsgTime"].contains(&k.as_str());
                let fresh = !lifted && !seen.contains(k);
                seen.push(k.clone());
                fresh
            })
            .collect::<Vec<_>>()
    });
    (command, slot(text()), slot(text()), slot(time()), slot(time()), others).prop_map(
        |(command, group_id, from_account, event_time, msg_time, others)| CallbackInput {
            command,
            group_id,
            from_account,
            event_time,
            msg_time,
            others,
        },
    )
}

/// What the lenient integer parser accepts: a JSON integer or a string of a decimal integer, within i64.
fn lenient_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse::<i128>().ok().and_then(|n| i64::try_from(n).ok()),
        _ => None,
    }
}

impl CallbackInput {
    fn entries(&self, command_in_body: bool) -> Vec<String> {
        let json = |v: &Value| serde_json::to_string(v).unwrap();
        let mut entries: Vec<String> = [
            command_in_body.then(|| format!("\"CallbackCommand\":{}", string_text(&self.command))),
            self.group_id.entry("GroupId", json),
            self.from_account.entry("From_Account", json),
            self.event_time.entry("EventTime", json),
            self.msg_time.entry("MsgTime", json),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (key, value, pretty) in &self.others {
            entries.push(format!("{}:{}", string_text(key), value_text(value, *pretty)));
        }
        entries
    }

    fn check(&self, envelope: &Value, text: &str, body: &str, sdk_app_id: u64) {
        let string_or_null = |slot: &Slot<Value>| match slot.set() {
            Some(Value::String(s)) => Value::String(s.clone()),
            _ => Value::Null,
        };
        assert_eq!(envelope["schema"], SCHEMA_CALLBACK_V1);
        assert_eq!(envelope["event_id"], expected_event_id(sdk_app_id, body.as_bytes()));
        assert_eq!(envelope["callback_command"], self.command);
        assert_eq!(envelope["group_id"], string_or_null(&self.group_id));
        assert_eq!(envelope["from_account"], string_or_null(&self.from_account));
        let event_time_ms = self
            .event_time
            .set()
            .and_then(lenient_i64)
            .or_else(|| self.msg_time.set().and_then(lenient_i64).and_then(|s| s.checked_mul(1000)));
        assert_eq!(envelope["event_time_ms"], event_time_ms.map_or(Value::Null, Value::from));
        assert_eq!(envelope["event_time"], expected_time(event_time_ms));
        assert!(text.ends_with(&format!(",\"body\":{}}}", body.trim())), "body verbatim");
    }
}

// Cases per property: proptest's default (256), or PROPTEST_CASES for a longer run.
proptest! {
    #[test]
    fn query_pairs_match_form_urlencoded(query in any_query()) {
        let split: Vec<_> = super::query::decoded_pairs(&query).collect();
        let parsed: Vec<_> = form_urlencoded::parse(query.as_bytes()).collect();
        prop_assert_eq!(split, parsed);
    }

    #[test]
    fn arbitrary_bytes_never_panic(query in any_query(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        check_request(&query, &body, NOW);
        check_request(&format!("SdkAppid={APP}&CallbackCommand={EXCEPTION_COMMAND}"), &body, NOW);
    }

    #[test]
    fn arbitrary_queries_never_panic(query in any_query(), now in prop_oneof![Just(NOW), any::<i64>()]) {
        check_request(&query, br#"{"CallbackCommand":"X.Y"}"#, now);
        if let Ok(parsed) = RawQuery::parse(&query) {
            prop_assert_eq!(parsed.raw(), query.as_str());
        }
    }

    #[test]
    fn arbitrary_objects_never_panic(
        body in any_object_body(),
        command in prop::option::of(any_command()),
        whitespace in prop::sample::select(vec!["", " ", "\n\t ", "\r\n"]),
    ) {
        let mut raw = format!("SdkAppid={APP}");
        if let Some(command) = command {
            raw.push('&');
            raw.push_str(&encode_query(&[("CallbackCommand", &command)]));
        }
        let mut padded = whitespace.as_bytes().to_vec();
        padded.extend_from_slice(&body);
        padded.extend_from_slice(whitespace.as_bytes());
        check_request(&raw, &body, NOW);
        check_request(&raw, &padded, NOW);
    }

    #[test]
    fn signed_queries_authenticate_within_the_skew(
        offset in -120i64..=120,
        uppercase in any::<bool>(),
        body in any_object_body(),
    ) {
        let time = (NOW + offset).to_string();
        let signature = if uppercase { sign(TOKEN, &time).to_uppercase() } else { sign(TOKEN, &time) };
        let raw = encode_query(&[("SdkAppid", &SIGNED_APP.to_string()), ("Sign", &signature), ("RequestTime", &time)]);
        let result = registry().authenticate(RawQuery::parse(&raw).unwrap(), NOW);
        if offset.abs() <= 60 {
            prop_assert_eq!(result.unwrap().sdk_app_id, SIGNED_APP);
        } else {
            prop_assert_eq!(result.unwrap_err(), RejectError::StaleRequestTime { max_skew_secs: 60 });
        }
        check_request(&raw, &body, NOW);
    }

    #[test]
    fn exception_fields_survive_the_round_trip(
        input in exception_input(),
        query in query_input(),
        seed in any::<u64>(),
    ) {
        let mut entries = input.entries(query.command_in_body());
        shuffle(&mut entries, seed);
        let body = format!("{{{}}}", entries.iter().map(|(_, e)| e.as_str()).collect::<Vec<_>>().join(","));
        let extra_order: Vec<&str> = entries.iter().filter_map(|(key, _)| *key).collect();
        let raw = query.raw(EXCEPTION_COMMAND);
        let auth = query.registry().authenticate(RawQuery::parse(&raw).unwrap(), NOW).unwrap();
        let Classified::Exception(event) = classify(&auth, body.as_bytes(), received()).unwrap() else {
            panic!("not an exception: {body}")
        };
        let text = String::from_utf8(event.to_json()).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        input.check(&value, &text, body.as_bytes(), &extra_order, query.sdk_app_id);
        query.check(&value);
        prop_assert_eq!(event.event_id(), expected_event_id(query.sdk_app_id, body.as_bytes()));
        prop_assert_eq!(event.group_id(), input.group_id.as_str());
    }

    #[test]
    fn envelope_fields_survive_the_round_trip(
        input in callback_input(),
        query in query_input(),
        seed in any::<u64>(),
        whitespace in prop::sample::select(vec!["", " ", "\n"]),
    ) {
        let mut entries = input.entries(query.command_in_body());
        shuffle(&mut entries, seed);
        let body = format!("{whitespace}{{{}}}{whitespace}", entries.join(","));
        let raw = query.raw(&input.command);
        let auth = query.registry().authenticate(RawQuery::parse(&raw).unwrap(), NOW).unwrap();
        let Normalized::Callback(envelope) = normalize(&auth, body.as_bytes(), received()).unwrap() else {
            panic!("not an envelope: {body}")
        };
        let text = String::from_utf8(envelope.to_json()).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        input.check(&value, &text, &body, query.sdk_app_id);
        query.check(&value);
        prop_assert_eq!(envelope.body(), body.trim());
        prop_assert_eq!(serde_json::from_str::<Value>(envelope.body()).unwrap(), serde_json::from_str::<Value>(&body).unwrap());
    }

    #[test]
    fn routing_picks_the_most_specific_route(
        specs in prop::collection::vec("[AB.*]{1,6}", 0..8),
        command in "[AB.]{0,8}",
        unrouted in prop_oneof![Just(UnroutedPolicy::Ack), Just(UnroutedPolicy::Reject)],
        refuse_before_callbacks in any::<bool>(),
        before in any::<bool>(),
    ) {
        // One topic per distinct command (runs of `*` collapsed), so that the table never sees a conflict.
        let mut routes: Vec<(String, String)> = Vec::new();
        for spec in &specs {
            let collapsed = collapse_stars(spec);
            if !routes.iter().any(|(c, _)| *c == collapsed) {
                routes.push((collapsed, format!("t{}", routes.len())));
            }
        }
        let table = RouteTable::parse(specs.iter().map(|s| {
            let collapsed = collapse_stars(s);
            format!("{s}={}", routes.iter().find(|(c, _)| *c == collapsed).unwrap().1)
        }))
        .unwrap();
        let command = if before { format!("{command}Before") } else { command };

        let expected = routes
            .iter()
            .enumerate()
            .filter(|(_, (pattern, _))| reference_match(pattern.as_bytes(), command.as_bytes()))
            .max_by_key(|(i, (pattern, _))| {
                let exact = !pattern.contains('*');
                let prefix = pattern.find('*').unwrap_or(pattern.len());
                let literal = pattern.bytes().filter(|&b| b != b'*').count();
                (exact, prefix, literal, std::cmp::Reverse(*i))
            })
            .map(|(_, (_, topic))| topic.as_str());
        prop_assert_eq!(table.lookup(&command).map(Route::topic), expected);

        let policy = RoutingPolicy { unrouted, refuse_before_callbacks };
        let disposition = route(&table, &command, policy);
        let before_refusal = (before && refuse_before_callbacks).then_some(RouteRefusal::BeforeCallback);
        let want = match expected {
            Some(topic) => Disposition::Publish { topic, refusal: before_refusal },
            None if before => Disposition::Skip { refusal: before_refusal },
            None => Disposition::Skip {
                refusal: (unrouted == UnroutedPolicy::Reject).then_some(RouteRefusal::Unrouted),
            },
        };
        prop_assert_eq!(disposition, want);
        prop_assert!(Disposition::OUTCOME_LABELS.contains(&disposition.outcome_label()));
    }

    #[test]
    fn route_specs_never_panic(spec in any::<String>(), command in any::<String>()) {
        if let Ok(table) = RouteTable::parse([&spec]) {
            let _ = table.lookup(&command);
            prop_assert_eq!(table.topics().len(), 1);
        } else {
            let err = RouteTable::parse([&spec]).unwrap_err();
            let quoted = format!("{spec:?}");
            prop_assert!(err.to_string().contains(&quoted), "{} does not name {}", err, quoted);
        }
        let _ = command_label(&command);
        let _ = is_before_callback(&command);
    }
}

/// Deterministic Fisher–Yates driven by a proptest-chosen seed (so shrinking stays meaningful).
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        items.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

fn collapse_stars(spec: &str) -> String {
    let mut out = String::new();
    for c in spec.chars() {
        if !(c == '*' && out.ends_with('*')) {
            out.push(c);
        }
    }
    out
}

/// Textbook recursive glob match, the reference for `Route::matches`.
fn reference_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| reference_match(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && reference_match(rest, &text[1..]),
    }
}
