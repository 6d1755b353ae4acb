//! `im-callback-forwarder send-test --url URL --sdk-app-id ID [--token T | --token-file F]`: posts realistic
//! `Group.CallbackSendMsgException` callbacks as Tencent's backend would (query parameters, `Sign` and
//! `RequestTime` when a token is given), prints each answer, and succeeds only if every answer is Tencent's OK.

use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;

use crate::callback::{sign, EXCEPTION_COMMAND};

/// The answer Tencent expects, byte for byte.
pub const OK_ANSWER: &str = r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;

/// Largest answer body read and printed.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// `send-test` flags.
#[derive(Args)]
pub struct SendTestArgs {
    /// The forwarder's callback URL, e.g. http://127.0.0.1:8080/ (plain http:// only: no TLS client is built in;
    /// test a deployment through a port-forward or from inside the cluster).
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// SDKAppID sent as `SdkAppid`.
    #[arg(long = "sdk-app-id", value_name = "ID")]
    pub sdk_app_id: u64,
    /// Callback token: sign each callback (`Sign`, `RequestTime`). Never printed.
    #[arg(long, env = "IMCF_SEND_TEST_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// File holding the callback token (its first non-empty line), e.g. the forwarder's --callback-token-file.
    #[arg(long, value_name = "PATH", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// `ErrorCode` of the event (10023: the group's message rate limit).
    #[arg(long, default_value_t = 10023, value_name = "N")]
    pub error_code: i64,
    /// `GroupId` of the event.
    #[arg(long, default_value = "@TGS#2J4SZEAEL", value_name = "G")]
    pub group_id: String,
    /// `CallbackCommand` (query and body).
    #[arg(long, default_value = EXCEPTION_COMMAND, value_name = "C")]
    pub command: String,
    /// Number of callbacks to send, each a distinct event (fresh `Random` and `EventTime`).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: u32,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 5, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout: u64,
}

/// Why `send-test` could not send.
#[derive(Debug, thiserror::Error)]
pub enum SendTestError {
    /// The URL is not `http://...`.
    #[error("--url must be a plain http:// URL (no TLS client is built in), got {0:?}")]
    Url(String),
    /// The token file cannot be read.
    #[error("--token-file {}: {source}", .path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// An empty token, or one longer than Tencent allows.
    #[error("{0}: a callback token must be 1 to 128 characters")]
    Token(&'static str),
    /// Standard output failed.
    #[error("writing the output: {0}")]
    Output(#[source] io::Error),
}

/// A random 32-bit number (std's per-process random hash keys, mixed with a counter and the clock).
fn random_u32(counter: u64) -> u32 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(counter);
    hasher.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.finish() as u32
}

/// The documented sample body of `Group.CallbackSendMsgException` with the given fields.
pub fn sample_body(command: &str, group_id: &str, random: u32, error_code: i64, event_time_ms: u128) -> String {
    let text = |s: &str| serde_json::to_string(s).expect("a string serializes");
    format!(
        concat!(
            "{{\"CallbackCommand\":{},\"GroupId\":{},\"Type\":\"Public\",",
            "\"From_Account\":\"jared\",\"Operator_Account\":\"admin\",\"Random\":{},\"OnlineOnlyFlag\":1,",
            "\"MsgBody\":[{{\"MsgType\":\"TIMTextElem\",\"MsgContent\":{{\"Text\":\"red packet\"}}}}],",
            "\"CloudCustomData\":\"your cloud custom data\",\"ErrorCode\":{},",
            "\"ErrorInfo\":\"msg count exceeds limit,please retry later\",\"EventTime\":\"{}\"}}"
        ),
        text(command),
        text(group_id),
        random,
        error_code,
        event_time_ms
    )
}

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn read_token(args: &SendTestArgs) -> Result<Option<String>, SendTestError> {
    let (flag, token) = match (&args.token, &args.token_file) {
        (Some(token), _) => ("--token", token.trim().to_owned()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| SendTestError::TokenFile { path: path.clone(), source })?;
            let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
            ("--token-file", line.to_owned())
        }
        (None, None) => return Ok(None),
    };
    if token.is_empty() || token.chars().count() > 128 {
        return Err(SendTestError::Token(flag));
    }
    Ok(Some(token))
}

/// Sends the callbacks; exit 0 only when every answer is Tencent's OK.
pub fn run(args: SendTestArgs) -> Result<ExitCode, SendTestError> {
    if !args.url.to_ascii_lowercase().starts_with("http://") {
        return Err(SendTestError::Url(args.url));
    }
    let token = read_token(&args)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(args.timeout)))
        .build()
        .into();
    let separator = if args.url.contains('?') { '&' } else { '?' };
    let base = format!(
        "{}{separator}SdkAppid={}&CallbackCommand={}&contenttype=json&ClientIP=10.0.0.1&OptPlatform=iOS",
        args.url,
        args.sdk_app_id,
        encode(&args.command)
    );
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let out_err = SendTestError::Output;
    writeln!(
        out,
        "POST {base}{} ({} callback(s), {})",
        if token.is_some() { "&Sign=<redacted>&RequestTime=<now>" } else { "" },
        args.count,
        if token.is_some() { "signed" } else { "unsigned" }
    )
    .map_err(out_err)?;
    let mut ok = 0u32;
    for index in 1..=args.count {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let body =
            sample_body(&args.command, &args.group_id, random_u32(u64::from(index)), args.error_code, now.as_millis());
        let mut url = base.clone();
        if let Some(token) = &token {
            let request_time = now.as_secs();
            url.push_str(&format!("&Sign={}&RequestTime={request_time}", sign(token, &request_time.to_string())));
        }
        let answer = agent.post(&url).header("Content-Type", "application/json").send(body.as_bytes());
        let line = match answer {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let mut text = String::new();
                let read = response
                    .body_mut()
                    .as_reader()
                    .take(MAX_ANSWER_BYTES)
                    .read_to_string(&mut text)
                    .map_err(|err| err.to_string());
                match read {
                    Ok(_) => {
                        if status == 200 && text.trim() == OK_ANSWER {
                            ok += 1;
                        }
                        format!("{index}/{}: {status} {}", args.count, text.trim())
                    }
                    Err(err) => format!("{index}/{}: {status}, body unreadable: {err}", args.count),
                }
            }
            Err(err) => format!("{index}/{}: no answer: {err}", args.count),
        };
        writeln!(out, "{line}").map_err(out_err)?;
    }
    let all = ok == args.count;
    writeln!(
        out,
        "{}: {ok} of {} answer(s) were Tencent's OK ({OK_ANSWER})",
        if all { "ok" } else { "FAIL" },
        args.count
    )
    .map_err(out_err)?;
    out.flush().map_err(out_err)?;
    Ok(if all { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_the_documented_sample_with_fresh_fields() {
        let body = sample_body(EXCEPTION_COMMAND, "@TGS#\"x", 7, 80001, 1670574414123);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["CallbackCommand"], EXCEPTION_COMMAND);
        assert_eq!(value["GroupId"], "@TGS#\"x");
        assert_eq!(value["Random"], 7);
        assert_eq!(value["ErrorCode"], 80001);
        assert_eq!(value["EventTime"], "1670574414123");
        assert_eq!(value["MsgBody"][0]["MsgContent"]["Text"], "red packet");
        assert_ne!(random_u32(1), random_u32(2));
    }
}
