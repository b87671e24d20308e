//! The operator's small HTTP server: `/metrics` (Prometheus text format), `/healthz` (live while
//! the process serves) and `/readyz` ([`Health::ready`]). Plain hyper, HTTP/1.1, GET only.

use std::{convert::Infallible, io, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{health::Health, metrics::Metrics};

fn answer(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

fn route(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return answer(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => answer(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => answer(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if health.ready() => answer(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => answer(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        _ => answer(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serves until accepting fails (the caller ends the process then).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, health: Arc<Health>) -> io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = route(&req, &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "Health/metrics connection ended with an error");
            }
        });
    }
}
