//! The span every HTTP request's log lines carry. It differs from
//! tracing-actix-web's default in two ways: query values that authorize
//! something (unsubscribe tokens, keys) are redacted, and the client address
//! is the one the rate limits use, so an `X-Forwarded-For` header is
//! believed only from trusted proxies.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RequestId, RootSpanBuilder};

use crate::http::AppState;

/// What stands in a log line for a redacted value.
pub const REDACTED: &str = "[redacted]";

/// Query parameters whose names contain one of these are redacted.
const SECRET_PARAMETERS: &[&str] = &["token", "key", "secret", "signature", "password", "auth"];

pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let client_ip = request
            .app_data::<web::Data<AppState>>()
            .and_then(|state| state.limiters.client_ip(request.head()))
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(ToString::to_string)
            .unwrap_or_default();
        tracing::info_span!(
            "HTTP request",
            http.method = %request.method(),
            http.route = %request.match_pattern().unwrap_or_default(),
            http.target = %redacted_target(request.path(), request.query_string()),
            http.client_ip = %client_ip,
            request_id = %request_id,
            http.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            exception.message = tracing::field::Empty,
            exception.details = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

/// Middleware: counts each answered request by method, route pattern (not
/// path: ids would make a series per booking) and status, and times it.
pub async fn count_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = std::time::Instant::now();
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.metrics.clone());
    let method = req.method().as_str().to_owned();
    let response = next.call(req).await;
    if let Some(metrics) = metrics {
        let (route, status) = match &response {
            Ok(response) => (
                response.request().match_pattern(),
                response.status().as_u16(),
            ),
            Err(error) => (None, error.as_response_error().status_code().as_u16()),
        };
        let route = route.unwrap_or_else(|| "unmatched".to_owned());
        metrics
            .http_requests
            .with_label_values(&[method.as_str(), route.as_str(), &status.to_string()])
            .inc();
        metrics
            .http_request_seconds
            .with_label_values(&[route.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    response
}

/// `path?query` with the values of secret-looking parameters replaced.
pub fn redacted_target(path: &str, query: &str) -> String {
    if query.is_empty() {
        return path.to_owned();
    }
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret(name) => format!("{name}={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMETERS.iter().any(|secret| name.contains(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_are_redacted_and_the_rest_kept() {
        assert_eq!(redacted_target("/v1/x", ""), "/v1/x");
        assert_eq!(
            redacted_target("/v1/unsubscribe", "token=abc.def&lang=en"),
            "/v1/unsubscribe?token=[redacted]&lang=en"
        );
        assert_eq!(
            redacted_target("/v1/rooms/r/messages", "before=10&limit=5&API_KEY=x"),
            "/v1/rooms/r/messages?before=10&limit=5&API_KEY=[redacted]"
        );
        assert_eq!(
            redacted_target("/p", "flag&access_token=t"),
            "/p?flag&access_token=[redacted]"
        );
    }
}
