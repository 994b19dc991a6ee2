//! The operations endpoint of `tally run`: `/healthz` (liveness), `/readyz`
//! (readiness with the reason), `/metrics` (Prometheus exposition) and
//! `/insights` (this instance's committed aggregates). Handlers only read the
//! telemetry; they never reach the loop or the broker. hyper does the HTTP.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::{metrics, telemetry};

/// Rows of the top lists in `/insights` (as `tally insights --json`'s default).
const INSIGHTS_TOP: usize = 10;

type Reply = Response<Full<Bytes>>;

/// Binds `addr` (port 0: a free port), logs the bound address and serves in the
/// background. Binding fails at once, before anything else starts.
pub async fn serve(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "metrics endpoint listening");
    telemetry().status.beat();
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics endpoint: accept failed");
                    continue;
                }
            };
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(route));
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "metrics endpoint: connection failed");
                }
            });
        }
    });
    Ok(bound)
}

async fn route(req: Request<Incoming>) -> Result<Reply, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n",
        ));
    }
    Ok(match req.uri().path() {
        "/healthz" => healthz(),
        "/readyz" => readyz(),
        "/metrics" => metrics_text().await,
        "/insights" => insights().await,
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /healthz /readyz /metrics /insights\n",
        ),
    })
}

fn reply(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        content_type.parse().expect("valid content type"),
    );
    r
}

fn json(code: StatusCode, v: &impl serde::Serialize) -> Reply {
    let body = serde_json::to_vec(v).expect("JSON of plain data");
    reply(code, "application/json", body)
}

fn healthz() -> Reply {
    let s = &telemetry().status;
    if s.alive() {
        reply(StatusCode::OK, "text/plain", "ok\n")
    } else {
        let body = format!(
            "processing loop silent for {:.0} s\n",
            s.since_beat().as_secs_f64()
        );
        reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", body)
    }
}

fn readyz() -> Reply {
    let r = telemetry().status.readiness();
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(code, &r)
}

/// Encoding and merging take CPU in proportion to the state: off the runtime's
/// workers, so the loop's tasks are never queued behind a scrape.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn metrics_text() -> Reply {
    let text = off_runtime(|| {
        let t = telemetry();
        t.metrics.ready.set(i64::from(t.status.readiness().ready));
        t.metrics.encode()
    })
    .await;
    match text {
        Some(text) => reply(StatusCode::OK, metrics::CONTENT_TYPE, text),
        None => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "encoding failed\n",
        ),
    }
}

async fn insights() -> Reply {
    let report = off_runtime(|| {
        let (latest, horizon) = telemetry().status.insights();
        latest.report(horizon, INSIGHTS_TOP)
    })
    .await;
    match report {
        Some(r) => json(StatusCode::OK, &r),
        None => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "report failed\n",
        ),
    }
}
