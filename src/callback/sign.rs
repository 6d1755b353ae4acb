//! Callback authentication: the registry of accepted apps and tokens, and the Sign / RequestTime check (shared doc §3).

use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::error::RejectError;
use super::query::{AuthenticatedQuery, Param, RawQuery};

/// `Sign` as Tencent computes it: lowercase hex of SHA-256 over `token + request_time`.
pub fn sign(token: &str, request_time: &str) -> String {
    hex::encode(digest(token, request_time))
}

fn digest(token: &str, request_time: &str) -> [u8; 32] {
    Sha256::new().chain_update(token.as_bytes()).chain_update(request_time.as_bytes()).finalize().into()
}

/// The apps this service accepts, each with the tokens that may sign for it: none means no Sign check for
/// that app, two mean a rotation is in progress and either verifies.
#[derive(Clone)]
pub struct AppRegistry {
    // Sorted by id; a handful of apps is the norm, so a binary search over a Vec beats a map.
    apps: Vec<(u64, Vec<Box<str>>)>,
    max_clock_skew: Duration,
}

impl AppRegistry {
    /// Builds the registry. Tokens of an id given more than once are merged; empty token strings are
    /// dropped (an empty token would authenticate nothing), so reject them in configuration.
    pub fn new(apps: impl IntoIterator<Item = (u64, Vec<String>)>, max_clock_skew: Duration) -> Self {
        let mut merged: Vec<(u64, Vec<Box<str>>)> = Vec::new();
        for (id, tokens) in apps {
            let tokens = tokens.into_iter().filter(|t| !t.is_empty()).map(String::into_boxed_str);
            match merged.binary_search_by_key(&id, |(k, _)| *k) {
                Ok(i) => {
                    let existing = &mut merged[i].1;
                    for token in tokens {
                        if !existing.contains(&token) {
                            existing.push(token);
                        }
                    }
                }
                Err(i) => merged.insert(i, (id, tokens.collect())),
            }
        }
        Self { apps: merged, max_clock_skew }
    }

    /// Whether `sdk_app_id` is a configured app.
    pub fn contains(&self, sdk_app_id: u64) -> bool {
        self.tokens(sdk_app_id).is_some()
    }

    /// Whether callbacks of `sdk_app_id` must carry a valid Sign (false for unknown apps).
    pub fn requires_sign(&self, sdk_app_id: u64) -> bool {
        self.tokens(sdk_app_id).is_some_and(|t| !t.is_empty())
    }

    /// The configured app ids, ascending.
    pub fn app_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.apps.iter().map(|(id, _)| *id)
    }

    /// The largest accepted distance between `RequestTime` and now.
    pub fn max_clock_skew(&self) -> Duration {
        self.max_clock_skew
    }

    fn tokens(&self, sdk_app_id: u64) -> Option<&[Box<str>]> {
        self.apps.binary_search_by_key(&sdk_app_id, |(k, _)| *k).ok().map(|i| self.apps[i].1.as_slice())
    }

    /// Checks `SdkAppid`, then (if the app has tokens) `Sign` and `RequestTime`, in that order.
    pub fn authenticate<'q>(
        &self,
        mut query: RawQuery<'q>,
        now_unix_secs: i64,
    ) -> Result<AuthenticatedQuery<'q>, RejectError> {
        let sdk_app_id = query.get(Param::SdkAppid).ok_or(RejectError::MissingSdkAppId)?;
        let sdk_app_id: u64 = sdk_app_id.parse().map_err(|_| RejectError::UnknownSdkAppId)?;
        let tokens = self.tokens(sdk_app_id).ok_or(RejectError::UnknownSdkAppId)?;
        if !tokens.is_empty() {
            self.verify(&query, tokens, now_unix_secs)?;
        }
        Ok(AuthenticatedQuery {
            sdk_app_id,
            callback_command: query.take(Param::CallbackCommand),
            content_type: query.take(Param::ContentType),
            client_ip: query.take(Param::ClientIp),
            opt_platform: query.take(Param::OptPlatform),
            raw: query.raw(),
        })
    }

    fn verify(&self, query: &RawQuery<'_>, tokens: &[Box<str>], now_unix_secs: i64) -> Result<(), RejectError> {
        let sign = query.get(Param::Sign).ok_or(RejectError::MissingSign("Sign"))?;
        let request_time = query.get(Param::RequestTime).ok_or(RejectError::MissingSign("RequestTime"))?;

        let mut provided = [0u8; 32];
        if sign.len() != 64 || hex::decode_to_slice(sign, &mut provided).is_err() {
            return Err(RejectError::MalformedSign);
        }

        let sent_at: i64 = request_time.parse().map_err(|_| RejectError::InvalidRequestTime)?;
        let max_skew_secs = self.max_clock_skew.as_secs();
        if (i128::from(now_unix_secs) - i128::from(sent_at)).unsigned_abs() > u128::from(max_skew_secs) {
            return Err(RejectError::StaleRequestTime { max_skew_secs });
        }

        // Check every token without short-circuiting, so timing reveals neither the match nor which token.
        let mut matched = Choice::from(0);
        for token in tokens {
            matched |= digest(token, request_time).ct_eq(&provided);
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(RejectError::BadSign)
        }
    }
}

impl std::fmt::Debug for AppRegistry {
    // Tokens are secrets: show only how many each app has.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppRegistry")
            .field(
                "apps",
                &self.apps.iter().map(|(id, tokens)| (id, format!("{} token(s)", tokens.len()))).collect::<Vec<_>>(),
            )
            .field("max_clock_skew", &self.max_clock_skew)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_TOKEN: &str = "xxxxyyyy";
    const VECTOR_TIME: &str = "1669872112";
    const VECTOR_SIGN: &str = "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061";
    const NOW: i64 = 1_669_872_112;
    const BASE: &str = "SdkAppid=1400000000&CallbackCommand=Group.CallbackSendMsgException&contenttype=json&ClientIP=10.0.0.1&OptPlatform=iOS";

    fn registry() -> AppRegistry {
        AppRegistry::new(
            [
                (1_400_000_000, vec![VECTOR_TOKEN.to_owned()]),
                (1_400_000_001, vec![]),
                (1_400_000_002, vec!["old".to_owned(), "new".to_owned()]),
            ],
            Duration::from_secs(60),
        )
    }

    fn auth(raw: &str, now: i64) -> Result<AuthenticatedQuery<'_>, RejectError> {
        registry().authenticate(RawQuery::parse(raw)?, now)
    }

    fn signed(sign: &str, time: &str) -> String {
        format!("{BASE}&Sign={sign}&RequestTime={time}")
    }

    #[test]
    fn official_test_vector() {
        assert_eq!(sign(VECTOR_TOKEN, VECTOR_TIME), VECTOR_SIGN);
        let raw = signed(VECTOR_SIGN, VECTOR_TIME);
        let q = auth(&raw, NOW).unwrap();
        assert_eq!(q.sdk_app_id, 1_400_000_000);
        assert_eq!(q.callback_command.as_deref(), Some("Group.CallbackSendMsgException"));
        assert_eq!(q.content_type.as_deref(), Some("json"));
        assert_eq!(q.client_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(q.opt_platform.as_deref(), Some("iOS"));
        assert_eq!(q.raw, raw);
    }

    #[test]
    fn uppercase_sign_is_accepted() {
        let raw = signed(&VECTOR_SIGN.to_uppercase(), VECTOR_TIME);
        assert!(auth(&raw, NOW).is_ok());
    }

    #[test]
    fn wrong_sign_is_bad_sign() {
        let mut wrong = VECTOR_SIGN.to_owned();
        wrong.replace_range(63.., "0");
        assert_eq!(auth(&signed(&wrong, VECTOR_TIME), NOW).unwrap_err(), RejectError::BadSign);
        // Right digest, but for another RequestTime inside the window.
        assert_eq!(auth(&signed(VECTOR_SIGN, "1669872113"), NOW).unwrap_err(), RejectError::BadSign);
    }

    #[test]
    fn malformed_sign_is_bad_sign() {
        for bad in [&VECTOR_SIGN[..62], &VECTOR_SIGN[..63], "zz", &format!("{VECTOR_SIGN}00")] {
            let err = auth(&signed(bad, VECTOR_TIME), NOW).unwrap_err();
            assert_eq!(err, RejectError::MalformedSign, "{bad}");
            assert_eq!((err.status(), err.error_code(), err.outcome_label()), (401, 40102, "bad_sign"));
        }
        let non_hex = format!("{}zz", &VECTOR_SIGN[..62]);
        assert_eq!(auth(&signed(&non_hex, VECTOR_TIME), NOW).unwrap_err(), RejectError::MalformedSign);
    }

    #[test]
    fn missing_sign_or_request_time() {
        assert_eq!(auth(BASE, NOW).unwrap_err(), RejectError::MissingSign("Sign"));
        let no_time = format!("{BASE}&Sign={VECTOR_SIGN}");
        assert_eq!(auth(&no_time, NOW).unwrap_err(), RejectError::MissingSign("RequestTime"));
        let empty_time = format!("{BASE}&Sign={VECTOR_SIGN}&RequestTime=");
        let err = auth(&empty_time, NOW).unwrap_err();
        assert_eq!((err.status(), err.error_code(), err.outcome_label()), (401, 40101, "missing_sign"));
    }

    #[test]
    fn stale_request_time_both_directions() {
        let raw = signed(VECTOR_SIGN, VECTOR_TIME);
        assert!(auth(&raw, NOW + 60).is_ok());
        assert!(auth(&raw, NOW - 60).is_ok());
        for now in [NOW + 61, NOW - 61, i64::MAX, i64::MIN] {
            let err = auth(&raw, now).unwrap_err();
            assert_eq!(err, RejectError::StaleRequestTime { max_skew_secs: 60 }, "{now}");
            assert_eq!((err.status(), err.error_code(), err.outcome_label()), (401, 40103, "stale_request_time"));
        }
    }

    #[test]
    fn non_integer_request_time_is_stale() {
        for time in ["1669872112.5", "abc", "1e9", "99999999999999999999999"] {
            let raw = signed(&sign(VECTOR_TOKEN, time), time);
            let err = auth(&raw, NOW).unwrap_err();
            assert_eq!(err, RejectError::InvalidRequestTime, "{time}");
            assert_eq!(err.outcome_label(), "stale_request_time");
        }
    }

    #[test]
    fn app_without_token_skips_the_sign_check() {
        let q = auth("SdkAppid=1400000001&Sign=garbage&RequestTime=x", NOW).unwrap();
        assert_eq!(q.sdk_app_id, 1_400_000_001);
        assert_eq!(q.callback_command, None);
    }

    #[test]
    fn either_token_verifies_during_rotation() {
        let reg = registry();
        for token in ["old", "new"] {
            let raw = format!("SdkAppid=1400000002&Sign={}&RequestTime=1669872100", sign(token, "1669872100"));
            assert!(reg.authenticate(RawQuery::parse(&raw).unwrap(), NOW).is_ok(), "{token}");
        }
        let raw = format!("SdkAppid=1400000002&Sign={}&RequestTime=1669872100", sign("other", "1669872100"));
        assert_eq!(reg.authenticate(RawQuery::parse(&raw).unwrap(), NOW).unwrap_err(), RejectError::BadSign);
    }

    #[test]
    fn sdk_app_id_missing_unknown_or_not_a_number() {
        assert_eq!(auth("CallbackCommand=x", NOW).unwrap_err(), RejectError::MissingSdkAppId);
        assert_eq!(auth("SdkAppid=", NOW).unwrap_err(), RejectError::MissingSdkAppId);
        for id in ["1400000009", "abc", "-1400000000", "18446744073709551616", "1400000000.0"] {
            let err = auth(&format!("SdkAppid={id}"), NOW).unwrap_err();
            assert_eq!(err, RejectError::UnknownSdkAppId, "{id}");
            assert_eq!((err.status(), err.error_code(), err.outcome_label()), (403, 40302, "unknown_sdk_app_id"));
        }
        let err = auth("SdkAppid=", NOW).unwrap_err();
        assert_eq!((err.status(), err.error_code(), err.outcome_label()), (403, 40301, "missing_sdk_app_id"));
    }

    #[test]
    fn registry_merges_ids_and_hides_tokens() {
        let reg = AppRegistry::new(
            [(7, vec!["a".to_owned()]), (3, vec![]), (7, vec!["b".to_owned(), "a".to_owned(), String::new()])],
            Duration::from_secs(5),
        );
        assert_eq!(reg.app_ids().collect::<Vec<_>>(), [3, 7]);
        assert!(reg.requires_sign(7));
        assert!(!reg.requires_sign(3));
        assert!(reg.contains(3));
        assert!(!reg.contains(4));
        assert_eq!(reg.max_clock_skew(), Duration::from_secs(5));
        let debug = format!("{reg:?}");
        assert!(debug.contains("2 token(s)"), "{debug}");
        assert!(!debug.contains("\"a\""), "{debug}");
    }
}
