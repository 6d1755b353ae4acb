//! Tencent-format answers: the fixed acknowledgement and the `FAIL` refusal.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::StatusCode;
use http_body_util::Full;
use hyper::Response;
use serde::Serialize;

/// The acknowledgement Tencent expects, byte for byte.
pub const OK_BODY: &[u8] = br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// HTTP 200 with [`OK_BODY`].
pub fn ok() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(OK_BODY)));
    response.headers_mut().insert(CONTENT_TYPE, JSON);
    response
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Fail<'a> {
    action_status: &'static str,
    error_code: u32,
    error_info: &'a str,
}

/// A refusal: `status` with `{"ActionStatus":"FAIL","ErrorCode":code,"ErrorInfo":info}`.
pub fn fail(status: u16, error_code: u32, error_info: &str) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&Fail { action_status: "FAIL", error_code, error_info })
        .expect("serializing a fixed struct cannot fail");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    response.headers_mut().insert(CONTENT_TYPE, JSON);
    if status == 405 {
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
    }
    response
}

/// A plain-text answer for the admin endpoints.
pub fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(response: Response<Full<Bytes>>) -> Vec<u8> {
        response.into_body().collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn ok_is_tencents_exact_answer() {
        let response = ok();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(body_of(response).await, br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#);
    }

    #[tokio::test]
    async fn fail_escapes_the_reason_and_sets_allow_on_405() {
        let response = fail(405, 40500, "method \"GET\" not allowed");
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()[ALLOW], "POST");
        assert_eq!(
            body_of(response).await,
            br#"{"ActionStatus":"FAIL","ErrorCode":40500,"ErrorInfo":"method \"GET\" not allowed"}"#
        );
    }
}
