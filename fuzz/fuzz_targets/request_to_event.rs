//! Fuzz target over the request → event path: first line = query, rest = body; asserts the output invariants.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use im_callback_forwarder::callback::{
    self, AppRegistry, Classified, Disposition, Normalized, RawQuery, RouteTable, RoutingPolicy, UnroutedPolicy,
    COMMAND_LABELS, EXCEPTION_COMMAND, SCHEMA_CALLBACK_V1, SCHEMA_V1,
};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

/// App without a token (no Sign check).
const APP: u64 = 1_400_000_000;
/// App with the token of the official test vector; the seeds sign for it at `NOW`.
const SIGNED_APP: u64 = 1_400_000_001;
const TOKEN: &str = "xxxxyyyy";
const NOW: i64 = 1_669_872_112;

/// The fields every event starts with; the rest is skipped (syntax-checked only, so `1e999` kept verbatim
/// in the body does not fail this).
#[derive(Deserialize)]
struct Head<'a> {
    schema: &'a str,
    event_id: &'a str,
    sdk_app_id: u64,
    callback_command: String,
    #[serde(borrow, default)]
    body: Option<&'a RawValue>,
}

fn check_output(json: &[u8], schema: &str, sdk_app_id: u64, body: &[u8], command: &str) -> Option<String> {
    serde_json::from_slice::<IgnoredAny>(json).expect("event is not JSON");
    let head: Head<'_> = serde_json::from_slice(json).expect("event lacks its head fields");
    assert_eq!(head.schema, schema);
    assert_eq!(head.sdk_app_id, sdk_app_id);
    assert_eq!(head.callback_command, command);
    assert_eq!(head.event_id.len(), 64, "event_id is not 64 hex digits");
    assert!(head.event_id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')), "event_id is not lowercase hex");
    assert_eq!(head.event_id, callback::event_id(sdk_app_id, body));
    head.body.map(|raw| raw.get().to_owned())
}

fn routes() -> RouteTable {
    RouteTable::parse(["Group.*=group", "C2C.CallbackAfterSendMsg=c2c", "*Before*=before", "State.*Change=state"])
        .expect("fixed routes parse")
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let query = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or_default();

    // Query fragments double as route specs: parsing must never panic and a table must answer lookups.
    if let Ok(table) = RouteTable::parse(query.split('&')) {
        let _ = table.lookup(&query);
        let _ = table.topics();
    }

    let registry = AppRegistry::new([(APP, vec![]), (SIGNED_APP, vec![TOKEN.to_owned()])], Duration::from_secs(60));
    let parsed = match RawQuery::parse(&query) {
        Ok(parsed) => parsed,
        Err(err) => {
            assert!((400..500).contains(&err.status()));
            return;
        }
    };
    let authenticated = match registry.authenticate(parsed, NOW) {
        Ok(authenticated) => authenticated,
        Err(err) => {
            assert!((400..500).contains(&err.status()));
            return;
        }
    };
    assert!(authenticated.sdk_app_id == APP || authenticated.sdk_app_id == SIGNED_APP);

    let received_at = UNIX_EPOCH + Duration::from_millis(1_670_574_415_007);
    let classified = callback::classify(&authenticated, body, received_at);
    let normalized = callback::normalize(&authenticated, body, received_at);
    let command = match (&classified, &normalized) {
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "classify and normalize refuse differently");
            assert_eq!(a.status(), 400);
            assert!((40010..=40015).contains(&a.error_code()));
            return;
        }
        (Ok(Classified::Exception(a)), Ok(Normalized::Exception(b))) => {
            let json = a.to_json();
            assert_eq!(json, b.to_json(), "classify and normalize disagree on the event");
            check_output(&json, SCHEMA_V1, authenticated.sdk_app_id, body, EXCEPTION_COMMAND);
            EXCEPTION_COMMAND.to_owned()
        }
        (Ok(Classified::Other { command }), Ok(Normalized::Callback(envelope))) => {
            assert_eq!(command, envelope.callback_command());
            let json = envelope.to_json();
            let kept = check_output(&json, SCHEMA_CALLBACK_V1, authenticated.sdk_app_id, body, command);
            assert_eq!(kept.as_deref(), Some(envelope.body()), "body not kept verbatim");
            assert!(!envelope.record_key().is_empty());
            command.to_string()
        }
        _ => panic!("classify and normalize disagree: {classified:?} / {normalized:?}"),
    };

    assert!(COMMAND_LABELS.contains(&callback::command_label(&command)));
    let routes = routes();
    for unrouted in [UnroutedPolicy::Ack, UnroutedPolicy::Reject] {
        for refuse_before_callbacks in [false, true] {
            let disposition = callback::route(&routes, &command, RoutingPolicy { unrouted, refuse_before_callbacks });
            assert!(Disposition::OUTCOME_LABELS.contains(&disposition.outcome_label()));
            assert_eq!(disposition == Disposition::Exception, command == EXCEPTION_COMMAND);
        }
    }
});
