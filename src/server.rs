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

/// Whether a failed `accept` concerns only the connection being accepted (the peer went away,
/// or the process ran out of descriptors for a moment): the server keeps serving.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    ) || matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12)) // ENFILE, EMFILE, ENOBUFS, ENOMEM
}

/// Serves for ever: a failed `accept` that concerns one connection (a peer that reset, a moment
/// without file descriptors) is logged and the server goes on after a short pause; only a listener
/// that cannot accept at all ends it (the caller ends the process then).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, health: Arc<Health>) -> io::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if transient(&e) => {
                tracing::warn!(error = %e, "Could not accept a health/metrics connection; going on");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_accept_of_one_connection_does_not_end_the_server() {
        for kind in [
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::Interrupted,
        ] {
            assert!(transient(&io::Error::from(kind)), "{kind:?}");
        }
        assert!(
            transient(&io::Error::from_raw_os_error(24)),
            "EMFILE: out of descriptors for a moment"
        );
        assert!(
            !transient(&io::Error::from(io::ErrorKind::InvalidInput)),
            "a broken listener ends it"
        );
    }
}
