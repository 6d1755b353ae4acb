//! Parsing of the callback's query string into the known Tencent parameters, and the authenticated view of it.

use std::borrow::Cow;

use super::error::RejectError;

/// A known query parameter, in Tencent's exact spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Param {
    SdkAppid,
    CallbackCommand,
    ContentType,
    ClientIp,
    OptPlatform,
    Sign,
    RequestTime,
}

impl Param {
    const COUNT: usize = 7;

    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "SdkAppid" => Self::SdkAppid,
            "CallbackCommand" => Self::CallbackCommand,
            "contenttype" => Self::ContentType,
            "ClientIP" => Self::ClientIp,
            "OptPlatform" => Self::OptPlatform,
            "Sign" => Self::Sign,
            "RequestTime" => Self::RequestTime,
            _ => return None,
        })
    }

    /// The parameter's name as it appears on the wire.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::SdkAppid => "SdkAppid",
            Self::CallbackCommand => "CallbackCommand",
            Self::ContentType => "contenttype",
            Self::ClientIp => "ClientIP",
            Self::OptPlatform => "OptPlatform",
            Self::Sign => "Sign",
            Self::RequestTime => "RequestTime",
        }
    }
}

/// Unvalidated known query parameters, percent-decoded and borrowed from the query string when possible.
/// Empty values count as absent; unknown parameters are ignored.
#[derive(Debug, Clone, Default)]
pub struct RawQuery<'q> {
    raw: &'q str,
    values: [Option<Cow<'q, str>>; Param::COUNT],
}

impl<'q> RawQuery<'q> {
    /// Parses a query string (without or with a leading `?`); a known parameter given twice is refused,
    /// even when one of the values is empty.
    pub fn parse(raw: &'q str) -> Result<Self, RejectError> {
        let mut query = RawQuery { raw, values: Default::default() };
        let mut seen = [false; Param::COUNT];
        let pairs = raw.strip_prefix('?').unwrap_or(raw);
        for (name, value) in decoded_pairs(pairs) {
            let Some(param) = Param::from_name(&name) else {
                continue;
            };
            let slot = param as usize;
            if std::mem::replace(&mut seen[slot], true) {
                return Err(RejectError::RepeatedParameter(param.name()));
            }
            if !value.is_empty() {
                query.values[slot] = Some(value);
            }
        }
        Ok(query)
    }

    /// The raw query string exactly as given to `parse`.
    pub fn raw(&self) -> &'q str {
        self.raw
    }

    /// `SdkAppid`, unvalidated.
    pub fn sdk_app_id(&self) -> Option<&str> {
        self.get(Param::SdkAppid)
    }

    /// `CallbackCommand`.
    pub fn callback_command(&self) -> Option<&str> {
        self.get(Param::CallbackCommand)
    }

    /// `contenttype`, as sent.
    pub fn content_type(&self) -> Option<&str> {
        self.get(Param::ContentType)
    }

    /// `ClientIP`, as sent.
    pub fn client_ip(&self) -> Option<&str> {
        self.get(Param::ClientIp)
    }

    /// `OptPlatform`, as sent.
    pub fn opt_platform(&self) -> Option<&str> {
        self.get(Param::OptPlatform)
    }

    /// `Sign`, as sent.
    pub fn sign(&self) -> Option<&str> {
        self.get(Param::Sign)
    }

    /// `RequestTime`, as sent.
    pub fn request_time(&self) -> Option<&str> {
        self.get(Param::RequestTime)
    }

    pub(super) fn get(&self, param: Param) -> Option<&str> {
        self.values[param as usize].as_deref()
    }

    pub(super) fn take(&mut self, param: Param) -> Option<Cow<'q, str>> {
        self.values[param as usize].take()
    }
}

/// The `application/x-www-form-urlencoded` pairs of `query`, as `form_urlencoded::parse` yields them. Tencent's
/// queries have nothing to decode, so those are split in place, without the crate's per-pair UTF-8 decoding.
pub(super) fn decoded_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    let plain = !query.bytes().any(|b| b == b'%' || b == b'+');
    let split = plain.then(|| {
        query.split('&').filter(|pair| !pair.is_empty()).map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (Cow::Borrowed(name), Cow::Borrowed(value))
        })
    });
    let decoded = (!plain).then(|| form_urlencoded::parse(query.as_bytes()));
    split.into_iter().flatten().chain(decoded.into_iter().flatten())
}

/// `raw` without its `Sign` parameter, every other parameter kept as sent: what may be stored or logged of a
/// query. A `Sign` is a bearer credential (it covers only the token and `RequestTime`, not the body), so whoever
/// reads it could post any body under that app until `RequestTime` leaves the clock-skew window.
pub fn without_sign(raw: &str) -> Cow<'_, str> {
    let pairs = raw.strip_prefix('?').unwrap_or(raw);
    // Compared as parsed, so that a percent-encoded name (`Si%67n`) is recognized as `RawQuery::parse` sees it.
    let is_sign = |pair: &str| form_urlencoded::parse(pair.as_bytes()).next().is_some_and(|(name, _)| name == "Sign");
    if !pairs.split('&').any(is_sign) {
        return Cow::Borrowed(raw);
    }
    Cow::Owned(pairs.split('&').filter(|pair| !is_sign(pair)).collect::<Vec<_>>().join("&"))
}

/// A query whose `SdkAppid` is one of ours and whose `Sign` verified (when the app has tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedQuery<'q> {
    /// The app the callback belongs to.
    pub sdk_app_id: u64,
    /// `CallbackCommand` from the query, if present.
    pub callback_command: Option<Cow<'q, str>>,
    /// `contenttype`, as sent (Tencent sends `json`; compare case-insensitively if at all).
    pub content_type: Option<Cow<'q, str>>,
    /// `ClientIP`, as sent.
    pub client_ip: Option<Cow<'q, str>>,
    /// `OptPlatform`, as sent (compare case-insensitively).
    pub opt_platform: Option<Cow<'q, str>>,
    /// The raw query string; store or log only [`without_sign`] of it.
    pub raw: &'q str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let q = RawQuery::parse(
            "SdkAppid=1400000000&CallbackCommand=Group.CallbackSendMsgException&contenttype=json&ClientIP=10.0.0.1&OptPlatform=iOS",
        )
        .unwrap();
        assert_eq!(q.sdk_app_id(), Some("1400000000"));
        assert_eq!(q.callback_command(), Some("Group.CallbackSendMsgException"));
        assert_eq!(q.content_type(), Some("json"));
        assert_eq!(q.client_ip(), Some("10.0.0.1"));
        assert_eq!(q.opt_platform(), Some("iOS"));
        assert_eq!(q.sign(), None);
        assert_eq!(q.request_time(), None);
        assert!(matches!(q.values[Param::SdkAppid as usize], Some(Cow::Borrowed(_))));
    }

    #[test]
    fn percent_decodes_and_strips_a_leading_question_mark() {
        let q = RawQuery::parse("?ClientIP=2001%3Adb8%3A%3A1&OptPlatform=Windows+Phone").unwrap();
        assert_eq!(q.client_ip(), Some("2001:db8::1"));
        assert_eq!(q.opt_platform(), Some("Windows Phone"));
        assert_eq!(q.raw(), "?ClientIP=2001%3Adb8%3A%3A1&OptPlatform=Windows+Phone");
    }

    #[test]
    fn plain_queries_split_exactly_as_form_urlencoded_parses_them() {
        for raw in [
            "",
            "&",
            "=",
            "a",
            "a=",
            "=b",
            "a=b=c",
            "&&a=1&&b=2&",
            "SdkAppid=1400000000&CallbackCommand=Group.CallbackSendMsgException&contenttype=json&ClientIP=10.0.0.1",
            "Sign=abc&RequestTime=1&OptPlatform=Web&x=y;z",
            "k=v%20w&ClientIP=1",
            "k=v+w",
        ] {
            let split: Vec<_> = decoded_pairs(raw).collect();
            let parsed: Vec<_> = form_urlencoded::parse(raw.as_bytes()).collect();
            assert_eq!(split, parsed, "{raw:?}");
        }
    }

    #[test]
    fn without_sign_drops_only_the_sign() {
        for (raw, expected) in [
            ("SdkAppid=1&Sign=abc&RequestTime=2", "SdkAppid=1&RequestTime=2"),
            ("?Sign=abc&SdkAppid=1", "SdkAppid=1"),
            ("SdkAppid=1&Si%67n=abc&RequestTime=2", "SdkAppid=1&RequestTime=2"),
            ("Sign&x=1", "x=1"),
            ("SdkAppid=1&sign=keep&XSign=keep", "SdkAppid=1&sign=keep&XSign=keep"),
            ("", ""),
        ] {
            assert_eq!(without_sign(raw), expected, "{raw}");
        }
        assert!(matches!(without_sign("SdkAppid=1"), Cow::Borrowed(_)));
    }

    #[test]
    fn repeated_known_parameter_is_refused() {
        for raw in [
            "SdkAppid=1&SdkAppid=1",
            "SdkAppid=&SdkAppid=1",
            "Sign=a&x=1&Sign=",
            "RequestTime=1&RequestTime=2",
            "Sign%3D=1&Sign=1&Sign=2",
        ] {
            let err = RawQuery::parse(raw).unwrap_err();
            assert_eq!(err.outcome_label(), "repeated_parameter", "{raw}");
        }
        assert_eq!(
            RawQuery::parse("a=1&ClientIP=x&ClientIP=y").unwrap_err(),
            RejectError::RepeatedParameter("ClientIP")
        );
    }

    #[test]
    fn empty_values_are_absent_and_unknown_or_differently_cased_names_ignored() {
        let q = RawQuery::parse("SdkAppid=&Sign&RequestTime=&foo=1&foo=2&sdkappid=5&SDKAppID=6&&=").unwrap();
        assert_eq!(q.sdk_app_id(), None);
        assert_eq!(q.sign(), None);
        assert_eq!(q.request_time(), None);
        let q = RawQuery::parse("").unwrap();
        assert_eq!(q.sdk_app_id(), None);
    }
}
