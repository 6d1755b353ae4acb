//! Writing of the outgoing JSON objects: constant keys, values validated upstream, the bytes serde_json would write.

use std::borrow::Cow;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;

// First instant humantime cannot format (year 10000), in milliseconds.
const RFC3339_LIMIT_MS: u128 = 253_402_300_800_000;

/// A JSON object written field by field into a buffer. The events' keys are constants and most values are copied
/// from an already validated body, so going through serde's `Serializer` (which escapes every key) costs more than
/// the rest of the event; the output is byte for byte what `serde_json::to_writer` wrote for the same values.
pub(super) struct JsonObject {
    out: Vec<u8>,
    empty: bool,
}

impl JsonObject {
    /// An object in a buffer sized for `capacity` bytes.
    pub(super) fn with_capacity(capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity);
        out.push(b'{');
        JsonObject { out, empty: true }
    }

    /// Appends `"key":value`; `key` is a constant that needs no escaping.
    pub(super) fn field(&mut self, key: &'static str, value: &(impl WriteJson + ?Sized)) -> &mut Self {
        debug_assert!(!needs_escaping(key), "constant keys need no escaping: {key}");
        if !std::mem::take(&mut self.empty) {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        value.write_json(&mut self.out);
        self
    }

    /// The finished object.
    pub(super) fn finish(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
    }
}

/// A value that writes itself as JSON.
pub(super) trait WriteJson {
    /// Appends the JSON text of `self` to `out`.
    fn write_json(&self, out: &mut Vec<u8>);
}

impl WriteJson for str {
    fn write_json(&self, out: &mut Vec<u8>) {
        if needs_escaping(self) {
            serde_json::to_writer(&mut *out, self).expect("writing to a Vec cannot fail");
        } else {
            out.push(b'"');
            out.extend_from_slice(self.as_bytes());
            out.push(b'"');
        }
    }
}

impl WriteJson for Cow<'_, str> {
    fn write_json(&self, out: &mut Vec<u8>) {
        self.as_ref().write_json(out)
    }
}

impl WriteJson for String {
    fn write_json(&self, out: &mut Vec<u8>) {
        self.as_str().write_json(out)
    }
}

impl WriteJson for u64 {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(itoa::Buffer::new().format(*self).as_bytes())
    }
}

impl WriteJson for i64 {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(itoa::Buffer::new().format(*self).as_bytes())
    }
}

impl WriteJson for bool {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" })
    }
}

/// Verbatim: the reader validated it.
impl WriteJson for RawValue {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.get().as_bytes())
    }
}

/// JSON text written as it is: a raw value's text, or a constant.
pub(super) struct Verbatim<'a>(pub(super) &'a str);

impl WriteJson for Verbatim<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.0.as_bytes())
    }
}

/// RFC 3339 UTC with milliseconds, or null outside years 1970–9999 (humantime panics before the epoch and fails
/// from year 10000 on).
impl WriteJson for SystemTime {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self.duration_since(UNIX_EPOCH) {
            Ok(since) if since.as_millis() < RFC3339_LIMIT_MS => {
                write!(out, "\"{}\"", humantime::format_rfc3339_millis(*self)).expect("writing to a Vec cannot fail")
            }
            _ => out.extend_from_slice(b"null"),
        }
    }
}

/// `null` when absent.
impl<T: WriteJson> WriteJson for Option<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Some(value) => value.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
    }
}

impl<T: WriteJson + ?Sized> WriteJson for &T {
    fn write_json(&self, out: &mut Vec<u8>) {
        (**self).write_json(out)
    }
}

/// Body fields kept as they are, as an object in body order.
impl WriteJson for [(Cow<'_, str>, &RawValue)] {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (index, (key, value)) in self.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            key.write_json(out);
            out.push(b':');
            value.write_json(out);
        }
        out.push(b'}');
    }
}

/// Whether JSON needs escapes for `text`: quotes, backslashes and control characters, exactly the characters
/// serde_json escapes.
fn needs_escaping(text: &str) -> bool {
    text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn written(value: &(impl WriteJson + ?Sized)) -> String {
        let mut out = Vec::new();
        value.write_json(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for text in
            ["", "plain", "é 🎁 中文", "quote \" back \\ slash", "ctl \u{0} \u{1f} \n \t", "del \u{7f}", "</script>"]
        {
            assert_eq!(written(text), serde_json::to_string(text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn numbers_flags_absent_values_raw_values_and_times() {
        assert_eq!(written(&u64::MAX), u64::MAX.to_string());
        assert_eq!(written(&i64::MIN), i64::MIN.to_string());
        assert_eq!(written(&true), "true");
        assert_eq!(written(&None::<u64>), "null");
        assert_eq!(written(&Some(Cow::Borrowed("x"))), "\"x\"");
        let raw: &RawValue = serde_json::from_str(r#"[ {"a" : 1} ]"#).unwrap();
        assert_eq!(written(raw), r#"[ {"a" : 1} ]"#);
        assert_eq!(written(&(UNIX_EPOCH + Duration::from_millis(1_669_872_112_345))), "\"2022-12-01T05:21:52.345Z\"");
        assert_eq!(written(&(UNIX_EPOCH - Duration::from_millis(1))), "null");
        assert_eq!(written(&(UNIX_EPOCH + Duration::from_millis(253_402_300_800_000))), "null");
        assert_eq!(written(&(UNIX_EPOCH + Duration::from_millis(253_402_300_799_999))), "\"9999-12-31T23:59:59.999Z\"");
    }

    #[test]
    fn objects_separate_fields_and_escape_extra_keys() {
        let raw: &RawValue = serde_json::from_str("1").unwrap();
        let extra = vec![(Cow::Borrowed("a\"b"), raw), (Cow::Borrowed("c"), raw)];
        let mut object = JsonObject::with_capacity(0);
        object.field("n", &1u64).field("extra", extra.as_slice()).field("none", &None::<bool>);
        assert_eq!(String::from_utf8(object.finish()).unwrap(), r#"{"n":1,"extra":{"a\"b":1,"c":1},"none":null}"#);
        assert_eq!(JsonObject::with_capacity(0).finish(), b"{}");
    }
}
