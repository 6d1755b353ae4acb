//! Tencent IM protocol helpers: Sign, event ids, the documented sample, timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use sha2::{Digest, Sha256};

/// The SDKAppID every test forwarder is configured with.
pub const APP_ID: &str = "1400000000";
/// The callback token (shared secret) tests configure with --callback-token.
pub const TOKEN: &str = "imcf-test-token";
/// The exception callback's command.
pub const EXCEPTION: &str = "Group.CallbackSendMsgException";
/// The exact accepted answer.
pub const OK_BODY: &[u8] = br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;
/// The event schema name (record header and JSON field).
pub const SCHEMA: &str = "tencent.im.group.send_msg_exception/v1";

/// The valid version of the documented sample body (shared doc section 5), byte for byte.
pub const DOC_SAMPLE: &str = concat!(
    "{\"CallbackCommand\":\"Group.CallbackSendMsgException\",\"GroupId\":\"@TGS#2J4SZEAEL\",\"Type\":\"Public\",\n",
    " \"From_Account\":\"jared\",\"Operator_Account\":\"admin\",\"Random\":123456,\"OnlineOnlyFlag\":1,\n",
    " \"MsgBody\":[{\"MsgType\":\"TIMTextElem\",\"MsgContent\":{\"Text\":\"red packet\"}}],\n",
    " \"CloudCustomData\":\"your cloud custom data\",\"ErrorCode\":10023,\n",
    " \"ErrorInfo\":\"msg count exceeds limit,please retry later\",\"EventTime\":\"1670574414123\"}"
);

/// The event JSON's fields, in the order the SPEC prints them.
pub const EVENT_FIELDS: [&str; 21] = [
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

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Sign = hex(SHA-256(token + RequestTime)) (shared doc section 3).
pub fn sign(token: &str, request_time: &str) -> String {
    sha256_hex(format!("{token}{request_time}").as_bytes())
}

/// event_id = hex(SHA-256(decimal SdkAppid + "\n" + raw body)).
pub fn event_id(app_id: &str, body: &[u8]) -> String {
    let mut data = format!("{app_id}\n").into_bytes();
    data.extend_from_slice(body);
    sha256_hex(&data)
}

/// Unix time now, seconds.
pub fn now_secs() -> i64 {
    now_ms() / 1000
}

/// Unix time now, milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

/// `&Sign=..&RequestTime=..` for `token` at `request_time`.
pub fn sign_params_at(token: &str, request_time: &str) -> String {
    format!("&Sign={}&RequestTime={request_time}", sign(token, request_time))
}

/// `&Sign=..&RequestTime=..` for `token`, RequestTime = now.
pub fn sign_params(token: &str) -> String {
    sign_params_at(token, &now_secs().to_string())
}

/// The query Tencent sends for `command` from app `app_id` (ClientIP 10.0.0.1, OptPlatform iOS),
/// signed with `token` when given.
pub fn query(app_id: &str, command: &str, token: Option<&str>) -> String {
    let mut q =
        format!("SdkAppid={app_id}&CallbackCommand={command}&contenttype=json&ClientIP=10.0.0.1&OptPlatform=iOS");
    if let Some(t) = token {
        q.push_str(&sign_params(t));
    }
    q
}

/// Parses `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC, exactly milliseconds) to Unix ms.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 24
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[23] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some((days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se) * 1000 + ms)
}

/// Formats Unix ms as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

// Howard Hinnant's days_from_civil / civil_from_days.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

/// The top-level keys of a JSON object, in the order they appear in the text.
pub fn top_level_keys(json: &[u8]) -> Vec<String> {
    struct Keys(Vec<String>);
    impl<'de> Deserialize<'de> for Keys {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = map.next_entry::<String, IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_slice::<Keys>(json).expect("a JSON object").0
}
