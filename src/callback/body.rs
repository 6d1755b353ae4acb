//! One-pass parsing of the callback body into borrowed top-level fields, and lenient decoding of known fields.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::error::BodyError;

/// Deepest nesting of arrays/objects accepted in a body (the top-level object counts as 1). serde_json reads at
/// most 127 levels by default and events nest body values one level deeper (`extra`, `body`), so bodies stop
/// at 126 and every event stays readable by consumers using serde_json's defaults.
pub const MAX_BODY_DEPTH: usize = 126;

/// A top-level body field this service interprets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Known {
    CallbackCommand,
    GroupId,
    Type,
    FromAccount,
    OperatorAccount,
    Random,
    OnlineOnlyFlag,
    MsgBody,
    CloudCustomData,
    ErrorCode,
    ErrorInfo,
    EventTime,
}

impl Known {
    const COUNT: usize = 12;

    fn from_key(key: &str) -> Option<Self> {
        Some(match key {
            "CallbackCommand" => Self::CallbackCommand,
            "GroupId" => Self::GroupId,
            "Type" => Self::Type,
            "From_Account" => Self::FromAccount,
            "Operator_Account" => Self::OperatorAccount,
            "Random" => Self::Random,
            "OnlineOnlyFlag" => Self::OnlineOnlyFlag,
            "MsgBody" => Self::MsgBody,
            "CloudCustomData" => Self::CloudCustomData,
            "ErrorCode" => Self::ErrorCode,
            "ErrorInfo" => Self::ErrorInfo,
            "EventTime" => Self::EventTime,
            _ => return None,
        })
    }

    /// The field's name as Tencent spells it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::CallbackCommand => "CallbackCommand",
            Self::GroupId => "GroupId",
            Self::Type => "Type",
            Self::FromAccount => "From_Account",
            Self::OperatorAccount => "Operator_Account",
            Self::Random => "Random",
            Self::OnlineOnlyFlag => "OnlineOnlyFlag",
            Self::MsgBody => "MsgBody",
            Self::CloudCustomData => "CloudCustomData",
            Self::ErrorCode => "ErrorCode",
            Self::ErrorInfo => "ErrorInfo",
            Self::EventTime => "EventTime",
        }
    }
}

/// The body's top-level object: known fields as raw values, every other field in original order.
#[derive(Debug)]
pub(super) struct BodyFields<'a> {
    known: [Option<&'a RawValue>; Known::COUNT],
    /// Unknown fields, verbatim, in body order.
    pub(super) extra: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> BodyFields<'a> {
    /// Parses `body` as one JSON object; rejects bad JSON, too-deep nesting and duplicate top-level keys.
    pub(super) fn parse(body: &'a [u8]) -> Result<Self, BodyError> {
        // serde_json skips over raw values iteratively, without its recursion limit, so depth is checked here.
        if exceeds_depth(body, MAX_BODY_DEPTH) {
            return Err(BodyError::TooDeep { max_depth: MAX_BODY_DEPTH });
        }
        // UTF-8 is checked once for the whole body: from a slice, serde_json would check every string and raw
        // value again on its own.
        let text = std::str::from_utf8(body).map_err(|e| BodyError::InvalidJson(e.to_string()))?;
        let top: TopLevel<'a> = serde_json::from_str(text).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => BodyError::NotAnObject,
            _ => BodyError::InvalidJson(e.to_string()),
        })?;
        if let Some(known) = top.duplicate {
            return Err(BodyError::DuplicateField(known.name().into()));
        }
        if let Some(key) = duplicate_key(&top.extra) {
            return Err(BodyError::DuplicateField(truncated(key)));
        }
        if !plainly_clean(text) {
            check_values(text)?;
        }
        Ok(Self { known: top.known, extra: top.extra })
    }

    /// A known field's raw value; JSON `null` counts as absent.
    pub(super) fn raw(&self, field: Known) -> Option<&'a RawValue> {
        self.known[field as usize].filter(|v| v.get() != "null")
    }

    /// A string field, absent or null → `None`.
    pub(super) fn string(&self, field: Known) -> Result<Option<Cow<'a, str>>, BodyError> {
        self.raw(field).map(|raw| json_string(raw).ok_or_else(|| invalid(field, "a string or null"))).transpose()
    }

    /// A required string field.
    pub(super) fn required_string(&self, field: Known) -> Result<Cow<'a, str>, BodyError> {
        match self.raw(field) {
            None => Err(BodyError::MissingField(field.name())),
            Some(raw) => json_string(raw).ok_or_else(|| invalid(field, "a string")),
        }
    }

    /// An integer field given as a JSON integer or a string holding one, within `T`'s range.
    pub(super) fn integer<T: TryFrom<i128>>(
        &self,
        field: Known,
        expected: &'static str,
    ) -> Result<Option<T>, BodyError> {
        self.raw(field).map(|raw| lenient_integer(raw).ok_or_else(|| invalid(field, expected))).transpose()
    }

    /// An unknown field's raw value, by its (decoded) key; JSON `null` counts as absent.
    pub(super) fn extra_raw(&self, key: &str) -> Option<&'a RawValue> {
        self.extra.iter().find(|(k, _)| k == key).map(|(_, v)| *v).filter(|v| v.get() != "null")
    }

    /// A flag given as `true`/`false`, `0`/`1`, or `"0"`/`"1"`.
    pub(super) fn flag(&self, field: Known) -> Result<Option<bool>, BodyError> {
        self.raw(field)
            .map(|raw| {
                let flag = match raw.get() {
                    "true" | "1" | "\"1\"" => Some(true),
                    "false" | "0" | "\"0\"" => Some(false),
                    other => serde_json::from_str::<LenientBool>(other).ok().map(|b| b.0),
                };
                flag.ok_or_else(|| invalid(field, "0, 1, true or false"))
            })
            .transpose()
    }

    /// An array field, verbatim; absent or null → `None`.
    pub(super) fn array(&self, field: Known) -> Result<Option<&'a RawValue>, BodyError> {
        match self.raw(field) {
            // Raw values carry no surrounding whitespace, and the body already parsed, so `[` means an array.
            Some(raw) if !raw.get().starts_with('[') => Err(invalid(field, "an array or null")),
            other => Ok(other),
        }
    }
}

/// A JSON integer or a string holding a decimal integer, within `T`'s range; `None` for anything else.
pub(super) fn lenient_integer<T: TryFrom<i128>>(raw: &RawValue) -> Option<T> {
    // A JSON integer token, or a string without escapes, parses as Rust parses it: the common case, without a
    // second JSON reader. Anything else (floats, escapes, huge numbers) takes the reader's path and rules.
    let plain = unescaped_string(raw).unwrap_or(raw.get());
    let n = match plain.parse::<i128>() {
        Ok(n) => n,
        Err(_) => serde_json::from_str::<LenientInt>(raw.get()).ok()?.0,
    };
    T::try_from(n).ok()
}

/// A JSON string value, borrowed unless it holds escapes; `None` if `raw` is not a string.
fn json_string(raw: &RawValue) -> Option<Cow<'_, str>> {
    match unescaped_string(raw) {
        Some(text) => Some(Cow::Borrowed(text)),
        None => serde_json::from_str::<CowStr<'_>>(raw.get()).ok().map(|s| s.0),
    }
}

/// The contents of a string token without escapes. The reader already validated the token, so between its
/// quotes there is no quote, no control character and no backslash: the text is the value.
fn unescaped_string(raw: &RawValue) -> Option<&str> {
    let text = raw.get().strip_prefix('"')?.strip_suffix('"')?;
    (!text.contains('\\')).then_some(text)
}

fn invalid(field: Known, expected: &'static str) -> BodyError {
    BodyError::InvalidField { field: field.name(), expected }
}

/// Whether arrays/objects in `body` nest deeper than `max`, skipping over string contents.
/// Exact for valid JSON; on invalid JSON the answer does not matter, parsing fails either way.
fn exceeds_depth(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&byte) = body.get(at) {
        match byte {
            b'"' => {
                // Most of a body is string contents: jump from backslash to backslash to the closing quote.
                at += 1;
                loop {
                    let Some(rest) = body.get(at..) else { return false };
                    match memchr::memchr2(b'"', b'\\', rest) {
                        None => return false,
                        Some(found) if rest[found] == b'\\' => at += found + 2,
                        Some(found) => {
                            at += found;
                            break;
                        }
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    false
}

/// The first key that appears twice among `fields`, if any.
fn duplicate_key<'k>(fields: &'k [(Cow<'_, str>, &RawValue)]) -> Option<&'k str> {
    if fields.len() <= 16 {
        // Small n, the usual case: quadratic but allocation-free.
        return fields
            .iter()
            .enumerate()
            .find(|(i, (key, _))| fields[..*i].iter().any(|(k, _)| k == key))
            .map(|(_, (key, _))| key.as_ref());
    }
    // Adversarial bodies can hold thousands of keys: sort to stay O(n log n).
    let mut keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_ref()).collect();
    keys.sort_unstable();
    keys.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// Refuses what the events would copy verbatim but a consumer could not read: the raw-value reader lets through
/// lone surrogate escapes (`"\ud800"`) and numbers beyond f64 (`1e400`, 400-digit integers), which
/// `serde_json::Value` with default features (and most JSON libraries) refuse; and duplicate keys in nested
/// objects, which consumers resolve differently (first or last wins). One more pass over the body, borrowing.
fn check_values(text: &str) -> Result<(), BodyError> {
    let duplicate = std::cell::RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let checked = de::DeserializeSeed::deserialize(Strict { duplicate: &duplicate }, &mut deserializer);
    match (checked, duplicate.into_inner()) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(key)) => Err(BodyError::DuplicateField(key)),
        (Err(err), None) => Err(BodyError::InvalidJson(err.to_string())),
    }
}

/// Most keys one object may hold for `plainly_clean` to vouch for it; past this it is not sure.
const PLAIN_MAX_KEYS: usize = 16;
/// Most keys the objects open at once may hold together for `plainly_clean` to vouch for them.
const PLAIN_MAX_OPEN_KEYS: usize = 64;
/// Most objects open at once for `plainly_clean` to vouch for them.
const PLAIN_MAX_OBJECTS: usize = 16;
/// Most digits before the decimal point of a number `plainly_clean` vouches for: f64 ends past 309.
const PLAIN_MAX_INTEGER_DIGITS: usize = 20;
/// Most digits after the decimal point of a number `plainly_clean` vouches for.
const PLAIN_MAX_FRACTION_DIGITS: usize = 40;

/// The fast path in front of `check_values`: `true` proves that `text` holds none of what it refuses (every
/// surrogate escape is a pair, every number is plainly within f64, no object repeats a key); `false` means not
/// sure. `text` is JSON the first parse accepted, nested within `MAX_BODY_DEPTH`.
fn plainly_clean(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut keys = OpenKeys::new();
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        let next = match byte {
            b'"' => plain_string(bytes, at + 1, &mut keys),
            b'{' => keys.open().then_some(at + 1),
            b'}' => keys.close().then_some(at + 1),
            b'-' | b'0'..=b'9' => plain_number_end(bytes, at),
            _ => Some(at + 1),
        };
        match next {
            Some(next) => at = next,
            None => return false,
        }
    }
    true
}

/// Skips the string starting at `from` (after its opening quote) and records it if it is a key: where the
/// scan goes on, or `None` if not sure (a surrogate escape that is not a pair, a key with escapes, too many keys).
fn plain_string<'a>(bytes: &'a [u8], from: usize, keys: &mut OpenKeys<'a>) -> Option<usize> {
    let (end, escaped) = plain_string_end(bytes, from)?;
    let after = end + 1;
    // In JSON accepted as valid, a string followed by a colon is a key, and only a key is.
    let rest = bytes.get(after..)?;
    let colon = rest.iter().position(|b| !b.is_ascii_whitespace()).is_some_and(|i| rest[i] == b':');
    if colon && (escaped || !keys.insert(&bytes[from..end])) {
        // An escaped key may equal another one spelled differently: left to serde_json, as are duplicates.
        return None;
    }
    Some(after)
}

/// The index of the quote closing the string that starts at `from`, and whether it holds escapes; `None` if a
/// `\u` escape is a lone or reversed surrogate (or the string does not end).
fn plain_string_end(bytes: &[u8], from: usize) -> Option<(usize, bool)> {
    let mut at = from;
    let mut escaped = false;
    loop {
        let found = at + memchr::memchr2(b'"', b'\\', bytes.get(at..)?)?;
        if bytes[found] == b'"' {
            return Some((found, escaped));
        }
        escaped = true;
        at = found + plain_escape_len(bytes.get(found..)?)?;
    }
}

/// The length of the escape `escape` starts with (at its backslash); `None` for a surrogate escape that is not
/// a high one immediately followed by a low one.
fn plain_escape_len(escape: &[u8]) -> Option<usize> {
    if escape.get(1) != Some(&b'u') {
        return Some(2);
    }
    match hex4(escape.get(2..6)?)? {
        0xD800..=0xDBFF => {
            let low = escape.get(6..12)?;
            (low.starts_with(b"\\u") && matches!(hex4(&low[2..])?, 0xDC00..=0xDFFF)).then_some(12)
        }
        0xDC00..=0xDFFF => None,
        _ => Some(6),
    }
}

/// Four hex digits as a number.
fn hex4(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0, |n, &d| Some(n << 4 | char::from(d).to_digit(16)?))
}

/// The end of the number starting at `at`; `None` unless it is an integer or decimal without exponent and with
/// few enough digits to be plainly within f64.
fn plain_number_end(bytes: &[u8], at: usize) -> Option<usize> {
    let digits =
        |from: usize| bytes.get(from..).map_or(0, |rest| rest.iter().take_while(|b| b.is_ascii_digit()).count());
    let start = at + usize::from(bytes[at] == b'-');
    let integer = digits(start);
    let mut end = start + integer;
    if bytes.get(end) == Some(&b'.') {
        let fraction = digits(end + 1);
        if fraction > PLAIN_MAX_FRACTION_DIGITS {
            return None;
        }
        end += 1 + fraction;
    }
    (integer <= PLAIN_MAX_INTEGER_DIGITS && !matches!(bytes.get(end), Some(b'e' | b'E'))).then_some(end)
}

/// The raw keys of the objects open during `plainly_clean`'s scan, innermost last, without allocating.
struct OpenKeys<'a> {
    keys: [&'a [u8]; PLAIN_MAX_OPEN_KEYS],
    len: usize,
    /// Where each open object's keys start in `keys`.
    starts: [usize; PLAIN_MAX_OBJECTS],
    objects: usize,
}

impl<'a> OpenKeys<'a> {
    fn new() -> Self {
        Self { keys: [&[]; PLAIN_MAX_OPEN_KEYS], len: 0, starts: [0; PLAIN_MAX_OBJECTS], objects: 0 }
    }

    /// An object opens; `false` if too many are open.
    fn open(&mut self) -> bool {
        let Some(start) = self.starts.get_mut(self.objects) else { return false };
        *start = self.len;
        self.objects += 1;
        true
    }

    /// The innermost object closes; `false` if none is open.
    fn close(&mut self) -> bool {
        let Some(objects) = self.objects.checked_sub(1) else { return false };
        self.objects = objects;
        self.len = self.starts[objects];
        true
    }

    /// Adds a key to the innermost object; `false` if it already holds that key, holds too many, or none is open.
    fn insert(&mut self, key: &'a [u8]) -> bool {
        let Some(&start) = self.objects.checked_sub(1).and_then(|i| self.starts.get(i)) else { return false };
        let own = &self.keys[start..self.len];
        if own.len() >= PLAIN_MAX_KEYS || self.len >= PLAIN_MAX_OPEN_KEYS || own.contains(&key) {
            return false;
        }
        self.keys[self.len] = key;
        self.len += 1;
        true
    }
}

/// Walks a value with `deserialize_any`, as `serde_json::Value` does, keeping nothing; notes a nested duplicate key.
#[derive(Clone, Copy)]
struct Strict<'s> {
    duplicate: &'s std::cell::RefCell<Option<Box<str>>>,
}

impl<'de> de::DeserializeSeed<'de> for Strict<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys: Vec<Cow<'de, str>> = Vec::new();
        let mut many: Option<std::collections::HashSet<Cow<'de, str>>> = None;
        while let Some(CowStr(key)) = map.next_key()? {
            let seen = match &mut many {
                Some(set) => !set.insert(key.clone()),
                None if keys.len() < 16 => keys.contains(&key),
                None => {
                    // Adversarial bodies can hold thousands of keys: a set keeps this linear.
                    let mut set: std::collections::HashSet<_> = keys.drain(..).collect();
                    let seen = !set.insert(key.clone());
                    many = Some(set);
                    seen
                }
            };
            if seen {
                *self.duplicate.borrow_mut() = Some(truncated(&key));
                return Err(de::Error::custom("duplicate key"));
            }
            if many.is_none() {
                keys.push(key);
            }
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

/// Keeps error texts bounded: at most 64 characters of an unknown key.
fn truncated(key: &str) -> Box<str> {
    match key.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &key[..end]).into_boxed_str(),
        None => key.into(),
    }
}

struct TopLevel<'a> {
    known: [Option<&'a RawValue>; Known::COUNT],
    extra: Vec<(Cow<'a, str>, &'a RawValue)>,
    duplicate: Option<Known>,
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TopVisitor;
        impl<'de> Visitor<'de> for TopVisitor {
            type Value = TopLevel<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut top = TopLevel { known: [None; Known::COUNT], extra: Vec::new(), duplicate: None };
                while let Some(CowStr(key)) = map.next_key()? {
                    let value: &'de RawValue = map.next_value()?;
                    match Known::from_key(&key) {
                        Some(known) => {
                            let slot = &mut top.known[known as usize];
                            if slot.is_some() {
                                // Reported after parsing, so a later syntax error still wins as invalid_json.
                                top.duplicate.get_or_insert(known);
                            } else {
                                *slot = Some(value);
                            }
                        }
                        None => top.extra.push((key, value)),
                    }
                }
                Ok(top)
            }
        }
        deserializer.deserialize_map(TopVisitor)
    }
}

/// A JSON string, borrowed from the input unless it holds escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = CowStr<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

/// A JSON integer or a string holding a decimal integer; floats and other types are refused.
struct LenientInt(i128);

impl<'de> Deserialize<'de> for LenientInt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;
        impl Visitor<'_> for IntVisitor {
            type Value = LenientInt;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string holding one")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(LenientInt(v.into()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(LenientInt(v.into()))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                // i128 covers every i64 and u64, so range checks happen once, in the caller's type.
                v.parse()
                    .map(LenientInt)
                    .map_err(|_| E::invalid_value(de::Unexpected::Other("non-integer string"), &self))
            }
        }
        deserializer.deserialize_any(IntVisitor)
    }
}

/// `true`/`false`, `0`/`1`, or `"0"`/`"1"`.
struct LenientBool(bool);

impl<'de> Deserialize<'de> for LenientBool {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BoolVisitor;
        impl Visitor<'_> for BoolVisitor {
            type Value = LenientBool;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("0, 1, true or false")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(LenientBool(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                match v {
                    0 => Ok(LenientBool(false)),
                    1 => Ok(LenientBool(true)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
                    .and_then(|v| self.visit_u64(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "0" => Ok(LenientBool(false)),
                    "1" => Ok(LenientBool(true)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(BoolVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{BENCH_BODIES, SAMPLE_BODY};
    use super::*;

    fn parse(body: &[u8]) -> Result<BodyFields<'_>, BodyError> {
        BodyFields::parse(body)
    }

    #[test]
    fn values_no_consumer_can_hold_and_nested_duplicates_are_refused() {
        let long = format!(r#""X":{}"#, "9".repeat(400));
        for (more, label) in [
            (r#""MsgBody":[{"MsgContent":{"Text":"\ud800"}}]"#, "invalid_json"),
            (r#""X":"a\udc00b""#, "invalid_json"),
            (r#""X":"\ud800\u0041""#, "invalid_json"),
            (r#""X":1e400"#, "invalid_json"),
            (r#""X":-1e400"#, "invalid_json"),
            (long.as_str(), "invalid_json"),
            (r#""X":[{"a":1,"a":2}]"#, "duplicate_field"),
            (r#""X":{"a":{"b":1,"b":1}}"#, "duplicate_field"),
        ] {
            let body = format!(r#"{{"GroupId":"g",{more}}}"#);
            let err = parse(body.as_bytes()).err().unwrap_or_else(|| panic!("{body} accepted"));
            assert_eq!(err.outcome_label(), label, "{body}: {err}");
        }
        let many: String = (0..100).map(|n| format!(r#""k{n}":{n},"#)).collect();
        let body = format!(r#"{{"X":{{{many}"k7":0}}}}"#);
        assert_eq!(parse(body.as_bytes()).unwrap_err(), BodyError::DuplicateField("k7".into()));
        for fine in [
            r#"{"X":"\ud83d\ude00","Y":1e300,"Z":123456789012345678901234567890,"W":-0,"V":1e-400}"#,
            r#"{"X":[{"a":1},{"a":2}],"Y":{"a":{"a":1}}}"#,
        ] {
            assert!(parse(fine.as_bytes()).is_ok(), "{fine}");
        }
        let body = format!(r#"{{"X":{{{many}"last":0}}}}"#);
        assert!(parse(body.as_bytes()).is_ok());
    }

    fn nested(prefix: &str, depth: usize, suffix: &str) -> Vec<u8> {
        let mut body = prefix.as_bytes().to_vec();
        body.extend(std::iter::repeat_n(b'[', depth));
        body.extend(std::iter::repeat_n(b']', depth));
        body.extend_from_slice(suffix.as_bytes());
        body
    }

    #[test]
    fn keeps_known_and_unknown_fields_borrowed_in_order() {
        let body = br#" { "GroupId" : "g", "Z":1, "A" : {"x":[1, 2]} ,"MsgBody":[ ] } "#;
        let f = parse(body).unwrap();
        assert_eq!(f.required_string(Known::GroupId).unwrap(), "g");
        assert!(matches!(f.required_string(Known::GroupId).unwrap(), Cow::Borrowed(_)));
        let extra: Vec<(&str, &str)> = f.extra.iter().map(|(k, v)| (k.as_ref(), v.get())).collect();
        assert_eq!(extra, [("Z", "1"), ("A", r#"{"x":[1, 2]}"#)]);
        assert_eq!(f.array(Known::MsgBody).unwrap().unwrap().get(), "[ ]");
    }

    #[test]
    fn escaped_keys_are_decoded_and_matched() {
        let f = parse(br#"{"Group\u0049d":"g","a\"b":1,"\u00e9":2}"#).unwrap();
        assert_eq!(f.required_string(Known::GroupId).unwrap(), "g");
        let keys: Vec<&str> = f.extra.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["a\"b", "é"]);
        assert_eq!(
            parse(br#"{"GroupId":"a","Group\u0049d":"b"}"#).unwrap_err(),
            BodyError::DuplicateField("GroupId".into())
        );
    }

    #[test]
    fn duplicate_keys_known_unknown_and_many() {
        assert_eq!(
            parse(br#"{"ErrorCode":1,"ErrorCode":1}"#).unwrap_err(),
            BodyError::DuplicateField("ErrorCode".into())
        );
        assert_eq!(parse(br#"{"x":1,"y":2,"x":3}"#).unwrap_err(), BodyError::DuplicateField("x".into()));
        let mut many = String::from("{");
        for i in 0..1000 {
            many.push_str(&format!("\"k{i}\":{i},"));
        }
        many.push_str("\"k500\":0}");
        assert_eq!(parse(many.as_bytes()).unwrap_err(), BodyError::DuplicateField("k500".into()));
        let long = format!("{{\"{0}\":1,\"{0}\":2}}", "é".repeat(100));
        let err = parse(long.as_bytes()).unwrap_err();
        assert_eq!(err, BodyError::DuplicateField(format!("{}…", "é".repeat(64)).into()));
        assert_eq!(err.outcome_label(), "duplicate_field");
    }

    #[test]
    fn not_json_not_object_bad_utf8() {
        for body in [&b""[..], b"{", b"{\"a\":1,}", b"{\"a\":1} x", b"nul", b"{\"a\":01}", b"\xef\xbb\xbf{}"] {
            let err = parse(body).unwrap_err();
            assert!(matches!(err, BodyError::InvalidJson(_)), "{body:?}: {err:?}");
            assert_eq!(err.outcome_label(), "invalid_json");
        }
        for body in [&b"[]"[..], b"1", b"\"s\"", b"null", b"true"] {
            assert_eq!(parse(body).unwrap_err(), BodyError::NotAnObject, "{body:?}");
        }
        // Invalid UTF-8 in a key, in a raw value, and outside strings; a raw NUL inside a string.
        for body in [
            &b"{\"\xff\":1}"[..],
            b"{\"a\":\"\xc3\x28\"}",
            b"{\"a\":[\"\xed\xa0\x80\"]}",
            b"{\"a\":\xff}",
            b"{\"a\":\"\x00\"}",
        ] {
            let err = parse(body).unwrap_err();
            assert!(matches!(err, BodyError::InvalidJson(_)), "{body:?}: {err:?}");
        }
    }

    /// The byte-by-byte definition `exceeds_depth` must agree with.
    fn exceeds_depth_bytewise(body: &[u8], max: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &b in body {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        false
    }

    proptest::proptest! {
        #[test]
        fn depth_check_agrees_with_its_bytewise_definition(
            body in proptest::collection::vec(proptest::sample::select(b"[]{}\"\\ax".to_vec()), 0..64),
            max in 0usize..6,
        ) {
            proptest::prop_assert_eq!(exceeds_depth(&body, max), exceeds_depth_bytewise(&body, max));
        }
    }

    #[test]
    fn fast_path_vouches_for_the_sample_and_bench_bodies() {
        for body in std::iter::once(SAMPLE_BODY).chain(BENCH_BODIES) {
            assert!(plainly_clean(body), "{body}");
            assert!(check_values(body).is_ok(), "{body}");
        }
        let twenty_digits = format!("{{\"n\":-{0},\"d\":{0}.{1}}}", "9".repeat(20), "1".repeat(40));
        for fine in [
            " { \"a\" : { \"a\" : [ 1 , { \"a\" : -0.5 } ] } , \"b\" :\n[{\"a\":1},{\"a\":2}] } ",
            r#"{"x":"\ud83d\ude00\udbff\udfff\u0041\\ud800\\udc00","y":"a\"b\\","z":"","w":{}}"#,
            r#"{"a":"a","b":"a" ,"c":"b" }"#,
            r#"["a","a",{"a":null,"A":true,"é":false,"😀":0}]"#,
            twenty_digits.as_str(),
        ] {
            assert!(plainly_clean(fine), "{fine}");
            assert!(check_values(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn fast_path_is_not_sure_of_anything_unusual() {
        let seventeen: String = (0..17).map(|n| format!("\"k{n}\":{n}")).collect::<Vec<_>>().join(",");
        let deep = format!("{}0{}", "{\"a\":".repeat(17), "}".repeat(17));
        let long_integer = format!("[{}]", "1".repeat(21));
        let long_fraction = format!("[0.{}]", "1".repeat(41));
        let unsure = [
            // What `check_values` refuses.
            r#"["\ud800"]"#,
            r#"["\ud800x"]"#,
            r#"["\udbff\u0041"]"#,
            r#"["\ud800\\udc00"]"#,
            r#"["\udc00"]"#,
            r#"["a\udfffb"]"#,
            r#"["\udc00\ud800"]"#,
            r#"{"\ud800":1}"#,
            "[1e400]",
            "[-1E400]",
            r#"{"a":{"b":1,"b":2}}"#,
            r#"[{"a":1,"c":{},"a":2}]"#,
            r#"{"a":1,"a":2}"#,
            // What it accepts, but is not plain enough to vouch for.
            "[1e5]",
            "[1.5E-3]",
            long_integer.as_str(),
            long_fraction.as_str(),
            r#"{"\u0061":1}"#,
            r#"{"a\"b":1}"#,
            &format!("{{{seventeen}}}"),
            &deep,
        ];
        for text in unsure {
            assert!(serde_json::from_str::<de::IgnoredAny>(text).is_ok(), "{text} is JSON");
            assert!(!plainly_clean(text), "{text}");
        }
        let sixteen = format!("{{{}}}", seventeen.rsplit_once(',').unwrap().0);
        assert!(plainly_clean(&sixteen));
    }

    /// String texts from pieces: text, escapes, an escaped backslash before `u`, and (rarer, as whole values must
    /// often be clean) surrogate halves, which joined make valid pairs, lone high and low halves, reversed pairs
    /// and a high half before another escape.
    fn string_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            8 => prop::sample::select(vec![
                "a", "é", "😀", " ", r"\n", r#"\""#, r"\\", r"\/", r"\u0041", r"\u00e9", r"\uffff", r"\ud83d\ude00",
                r"\\ud800",
            ]),
            1 => prop::sample::select(vec![r"\ud800", r"\udbff", r"\udc00", r"\udfff"]),
        ];
        prop::collection::vec(piece, 0..5).prop_map(|pieces| format!("\"{}\"", pieces.concat()))
    }

    /// Keys from a small set, so that objects repeat them, most spelled plainly, some with escapes that decode to
    /// one of them.
    fn key_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            6 => prop::sample::select(vec![r#""a""#, r#""b""#, r#""é""#, r#""😀""#, r#""""#, r#""a\"b""#])
                .prop_map(str::to_owned),
            2 => prop::sample::select(vec![r#""\u0061""#, r#""a\u0022b""#, r#""\u00e9""#, r#""\ud83d\ude00""#])
                .prop_map(str::to_owned),
            1 => string_text(),
            2 => (0..40u8).prop_map(|n| format!("\"k{n}\"")),
        ]
    }

    /// Number texts: short and long integers and decimals (f64 ends past 309 digits), with and without exponents.
    fn number_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            6 => "-?(0|[1-9][0-9]{0,21})(\\.[0-9]{1,45})?",
            1 => "-?[1-9][0-9]{300,320}(\\.[0-9]{1,3})?",
            1 => "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,3})?[eE][+-]?[0-9]{1,4}",
        ]
    }

    /// Whitespace between tokens, mostly none, as in the bench's bodies.
    fn whitespace() -> impl proptest::strategy::Strategy<Value = &'static str> {
        proptest::sample::select(vec!["", "", "", "", "", " ", "\n  ", "\t", "\r\n"])
    }

    /// JSON value texts mixing every shape `plainly_clean` must see through: nested objects with repeated keys
    /// (also spelled with escapes), objects past its key limit, surrogate escapes, numbers past f64, whitespace.
    fn value_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            1 => prop::sample::select(vec!["null", "true", "false"]).prop_map(str::to_owned),
            2 => number_text(),
            3 => string_text(),
        ];
        leaf.prop_recursive(5, 64, 4, |inner| {
            let entry = (key_text(), whitespace(), inner.clone(), whitespace());
            prop_oneof![
                3 => prop::collection::vec((inner.clone(), whitespace()), 0..4).prop_map(|items| {
                    let items: Vec<String> = items.into_iter().map(|(v, w)| format!("{w}{v}{w}")).collect();
                    format!("[{}]", items.join(","))
                }),
                3 => prop::collection::vec(entry, 0..6).prop_map(|entries| {
                    let entries: Vec<String> =
                        entries.into_iter().map(|(k, w, v, x)| format!("{w}{k}{x}:{w}{v}{x}")).collect();
                    format!("{{{}}}", entries.join(","))
                }),
                // Distinct plain keys, up to past the 16 the fast path checks.
                1 => (0..20usize, inner).prop_map(|(n, value)| {
                    let entries: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{value}")).collect();
                    format!("{{{}}}", entries.join(","))
                }),
            ]
        })
    }

    proptest::proptest! {
        // More cases than the default: a text must be clean everywhere else for a flaw in one place to count.
        #![proptest_config(proptest::test_runner::Config::with_cases(1024))]

        #[test]
        fn fast_path_vouches_only_for_what_serde_json_accepts(text in value_text()) {
            proptest::prop_assert!(serde_json::from_str::<de::IgnoredAny>(&text).is_ok(), "not JSON: {}", text);
            if plainly_clean(&text) {
                proptest::prop_assert!(check_values(&text).is_ok(), "vouched for {}: {:?}", text, check_values(&text));
                proptest::prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
            }
        }

        #[test]
        fn fast_path_never_panics(text in "[\\[\\]{}\":,\\\\ u0-9a-fdD.eE+-]{0,48}") {
            let _ = plainly_clean(&text);
        }
    }

    /// The property above is only as strong as its texts: they must often be vouched for, and often not.
    #[test]
    fn generated_values_reach_every_answer() {
        use proptest::strategy::{Strategy, ValueTree};
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut vouched, mut unsure_fine, mut refused) = (0, 0, 0);
        for _ in 0..1000 {
            let text = value_text().new_tree(&mut runner).unwrap().current();
            match (plainly_clean(&text), check_values(&text).is_ok()) {
                (true, _) => vouched += 1,
                (false, true) => unsure_fine += 1,
                (false, false) => refused += 1,
            }
        }
        println!("vouched {vouched}, unsure but fine {unsure_fine}, refused {refused}");
        assert!(vouched >= 200 && unsure_fine >= 100 && refused >= 100, "{vouched} {unsure_fine} {refused}");
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        let too_deep = BodyError::TooDeep { max_depth: MAX_BODY_DEPTH };
        assert_eq!(parse(&nested("{\"x\":", 10_000, "}")).unwrap_err(), too_deep);
        assert_eq!(parse(&nested("{\"MsgBody\":", 10_000, "}")).unwrap_err(), too_deep);
        assert_eq!(parse(&nested("", 10_000, "")).unwrap_err(), too_deep);
        // Unterminated: still no overflow.
        assert_eq!(parse(&[b'['; 10_000]).unwrap_err(), too_deep);
        // The limit itself: top-level object + 125 arrays is fine, one more is not.
        assert!(parse(&nested("{\"x\":", MAX_BODY_DEPTH - 1, "}")).is_ok());
        assert_eq!(parse(&nested("{\"x\":", MAX_BODY_DEPTH, "}")).unwrap_err(), too_deep);
        // Brackets inside strings (with escaped quotes) do not count.
        let body = format!("{{\"x\":\"\\\"{}\"}}", "[".repeat(10_000));
        assert!(parse(body.as_bytes()).is_ok());
    }

    #[test]
    fn lenient_integers() {
        let f = parse(br#"{"Random":"123","ErrorCode":-5,"EventTime":"-7","a":0}"#).unwrap();
        assert_eq!(f.integer::<u64>(Known::Random, "x").unwrap(), Some(123));
        assert_eq!(f.integer::<i64>(Known::ErrorCode, "x").unwrap(), Some(-5));
        assert_eq!(f.integer::<i64>(Known::EventTime, "x").unwrap(), Some(-7));
        assert_eq!(f.integer::<i64>(Known::OnlineOnlyFlag, "x").unwrap(), None);
        let max = parse(br#"{"Random":18446744073709551615,"ErrorCode":"9223372036854775807"}"#).unwrap();
        assert_eq!(max.integer::<u64>(Known::Random, "x").unwrap(), Some(u64::MAX));
        assert_eq!(max.integer::<i64>(Known::ErrorCode, "x").unwrap(), Some(i64::MAX));
        for value in [
            "1.5",
            "1e3",
            "1.0",
            "\"1.5\"",
            "\"\"",
            "\" 1\"",
            "\"0x10\"",
            "true",
            "[1]",
            "{}",
            "18446744073709551616",
            "\"18446744073709551616\"",
            "-1",
            "\"99999999999999999999999999999999999999999\"",
        ] {
            let body = format!("{{\"Random\":{value}}}");
            let f = parse(body.as_bytes()).unwrap();
            assert_eq!(
                f.integer::<u64>(Known::Random, "an integer").unwrap_err(),
                BodyError::InvalidField { field: "Random", expected: "an integer" },
                "{value}"
            );
        }
    }

    #[test]
    fn lenient_flags() {
        for (value, expected) in
            [("0", false), ("1", true), ("true", true), ("false", false), ("\"0\"", false), ("\"1\"", true)]
        {
            let body = format!("{{\"OnlineOnlyFlag\":{value}}}");
            assert_eq!(parse(body.as_bytes()).unwrap().flag(Known::OnlineOnlyFlag).unwrap(), Some(expected), "{value}");
        }
        for value in ["2", "-1", "\"true\"", "\"\"", "1.0", "[]"] {
            let body = format!("{{\"OnlineOnlyFlag\":{value}}}");
            assert!(parse(body.as_bytes()).unwrap().flag(Known::OnlineOnlyFlag).is_err(), "{value}");
        }
        assert_eq!(parse(b"{\"OnlineOnlyFlag\":null}").unwrap().flag(Known::OnlineOnlyFlag).unwrap(), None);
    }

    #[test]
    fn strings_and_arrays() {
        let f = parse(br#"{"GroupId":"a\nb","Type":null,"From_Account":5,"MsgBody":{},"ErrorInfo":null}"#).unwrap();
        let group = f.required_string(Known::GroupId).unwrap();
        assert_eq!(group, "a\nb");
        assert!(matches!(group, Cow::Owned(_)));
        assert_eq!(f.required_string(Known::Type).unwrap_err(), BodyError::MissingField("Type"));
        assert_eq!(f.required_string(Known::ErrorCode).unwrap_err(), BodyError::MissingField("ErrorCode"));
        assert_eq!(
            f.string(Known::FromAccount).unwrap_err(),
            BodyError::InvalidField { field: "From_Account", expected: "a string or null" }
        );
        assert_eq!(f.string(Known::ErrorInfo).unwrap(), None);
        assert_eq!(f.string(Known::CloudCustomData).unwrap(), None);
        assert_eq!(
            f.array(Known::MsgBody).unwrap_err(),
            BodyError::InvalidField { field: "MsgBody", expected: "an array or null" }
        );
        // A lone surrogate escape is not a valid string value: the body is refused as a whole.
        assert_eq!(parse(br#"{"GroupId":"\ud800"}"#).unwrap_err().outcome_label(), "invalid_json");
    }
}
