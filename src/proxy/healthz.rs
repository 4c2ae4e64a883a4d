//! `/healthz`: answered before any Host routing, for any Host, from what init last told us.
#![forbid(unsafe_code)]

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::body::{full, ProxyBody};
use super::protocol::ProxyState;

pub const PATH: &str = "/healthz";

/// 200 `{"status":"ok"}` when no critical service is unhealthy and the instance is not draining, else 503 with
/// the reasons.
pub fn respond(state: &ProxyState, head_only: bool) -> Response<ProxyBody> {
    let healthy = state.unhealthy.is_empty() && !state.draining;
    let body = if healthy {
        serde_json::json!({"status": "ok"})
    } else {
        serde_json::json!({"status": "unhealthy", "draining": state.draining, "unhealthy": state.unhealthy})
    };
    let mut text = body.to_string();
    text.push('\n');
    let mut response = Response::new(if head_only {
        super::body::empty()
    } else {
        full(text)
    });
    *response.status_mut() = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_state() {
        assert_eq!(
            respond(&ProxyState::default(), false).status(),
            StatusCode::OK
        );
        let draining = ProxyState {
            draining: true,
            ..Default::default()
        };
        assert_eq!(
            respond(&draining, false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let sick = ProxyState {
            unhealthy: vec!["app".into()],
            ..Default::default()
        };
        assert_eq!(
            respond(&sick, false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
