//! The control server's replies: one body type, JSON answers and errors, shared by the API, the dashboard
//! and its event stream.
#![forbid(unsafe_code)]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};
use serde::Serialize;

use crate::api::{ApiError, ErrorReply};

pub(super) type ReplyBody = UnsyncBoxBody<Bytes, Infallible>;

pub(super) fn with_content_type(
    mut response: Response<ReplyBody>,
    content_type: &'static str,
) -> Response<ReplyBody> {
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(super) fn json_response(status: StatusCode, value: &impl Serialize) -> Response<ReplyBody> {
    let mut body = serde_json::to_vec(value).unwrap_or_else(|err| {
        tracing::error!(%err, "control socket: reply not serializable");
        br#"{"error": "reply not serializable"}"#.to_vec()
    });
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = status;
    with_content_type(response, "application/json")
}

pub(super) fn error_response(err: &ApiError) -> Response<ReplyBody> {
    let status = StatusCode::from_u16(err.status)
        .ok()
        .filter(|status| status.is_client_error() || status.is_server_error())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(
        status,
        &ErrorReply {
            error: err.message.clone(),
        },
    )
}

pub(super) fn method_not_allowed(
    got: &Method,
    path: &str,
    allowed: &Method,
) -> Response<ReplyBody> {
    let mut response = error_response(&ApiError {
        status: 405,
        message: format!("{got} is not allowed on {path}; use {allowed}"),
    });
    if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
        response.headers_mut().insert(ALLOW, value);
    }
    response
}
