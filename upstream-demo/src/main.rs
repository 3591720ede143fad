//! upstream-demo: the demo API behind sluice. Answers every method and path with 200 and a
//! small JSON body; fast enough (hyper, keep-alive) never to be a benchmark's bottleneck.
//!
//! A request with the header `x-echo: 1` also gets its query, headers and body size back, so
//! tests can see exactly what the proxy forwarded. `x-hold-ms: N` holds the request N ms (at
//! most 60 s) before answering, and `x-status: N` answers with status N. `GET /__inflight`
//! reports how many requests are being answered now and the most there ever were at once
//! (`POST /__inflight` resets that), so tests can see what a limiter let through.
//! `GET /sse?events=N&every_ms=M` streams N server-sent events, one every M ms.
//! `x-usage-tokens: N` is answered with the same header, as a metered API reports what a
//! request consumed, and N is added to the total that `GET /__usage` reports (`POST` resets
//! it), so tests can compare what sluice settled with what the upstream charged.
//! `x-arrival: 1` is answered with `x-arrived-us`: when the request arrived (µs since the
//! epoch), so tests can see the pace at which a throttle lets requests through.

use bytes::Bytes;
use clap::Parser;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// Requests being answered now, and the most there were at once.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static MAX_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// The sum of every `x-usage-tokens` this process has answered with.
static USAGE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts a request in flight for as long as it lives.
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
        MAX_IN_FLIGHT.fetch_max(now, Ordering::SeqCst);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Parser)]
#[command(
    version,
    about = "Demo upstream for sluice: 200 and a small JSON body for every request"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// On SIGTERM keep serving this many seconds before exiting (a sidecar in front of it
    /// drains its requests meanwhile).
    #[arg(long, default_value_t = 0)]
    linger: u64,
}

fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?
        .block_on(serve(cli.listen, Duration::from_secs(cli.linger)))
}

async fn serve(addr: SocketAddr, linger: Duration) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!("upstream-demo listening on {addr}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        term.recv().await;
        eprintln!("upstream-demo: SIGTERM; serving {linger:?} more");
        tokio::time::sleep(linger).await;
        std::process::exit(0);
    });
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("accept: {e}");
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(handle));
            let _ = conn.await;
        });
    }
}

fn user_id(query: Option<&str>) -> Value {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "user_id")
        .map(|(_, v)| {
            Value::String(
                percent_decode_str(&v.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        })
        .unwrap_or(Value::Null)
}

fn header_number(parts: &hyper::http::request::Parts, name: &str) -> Option<u64> {
    parts.headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(status: u16, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// A body sent frame by frame as a task produces them (streams, and later trailers).
struct Frames(tokio::sync::mpsc::Receiver<hyper::body::Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn query_number(query: Option<&str>, name: &str) -> Option<u64> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// `events` server-sent events, one every `every_ms`, then the end of the stream.
fn sse(query: Option<&str>) -> Response<Body> {
    let events = query_number(query, "events").unwrap_or(3).min(10_000);
    let every = Duration::from_millis(query_number(query, "every_ms").unwrap_or(100).min(60_000));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let _in_flight = InFlight::enter();
    tokio::spawn(async move {
        let _in_flight = _in_flight;
        for i in 0..events {
            let event = format!("id: {i}\ndata: event {i}\n\n");
            if tx
                .send(hyper::body::Frame::data(Bytes::from(event)))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Frames(rx).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/sse" {
        return Ok(sse(req.uri().query()));
    }
    if req.uri().path() == "/__inflight" {
        if req.method() == hyper::Method::POST {
            MAX_IN_FLIGHT.store(IN_FLIGHT.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        let body = json!({
            "in_flight": IN_FLIGHT.load(Ordering::SeqCst),
            "max_in_flight": MAX_IN_FLIGHT.load(Ordering::SeqCst),
        });
        return Ok(json_response(200, body));
    }
    if req.uri().path() == "/__usage" {
        if req.method() == hyper::Method::POST {
            USAGE.store(0, Ordering::SeqCst);
        }
        return Ok(json_response(
            200,
            json!({"tokens": USAGE.load(Ordering::SeqCst)}),
        ));
    }
    let _in_flight = InFlight::enter();
    let arrived_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let (parts, body) = req.into_parts();
    if let Some(ms) = header_number(&parts, "x-hold-ms") {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    let status = header_number(&parts, "x-status")
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| (200..600).contains(s))
        .unwrap_or(200);
    // Read and discard the body, counting it, so the connection can be reused.
    let body_len = match body.collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    let mut out = Map::new();
    out.insert("method".into(), parts.method.as_str().into());
    out.insert("path".into(), parts.uri.path().into());
    out.insert("user_id".into(), user_id(parts.uri.query()));
    if parts.uri.path() == "/api/data" {
        out.insert(
            "data".into(),
            json!({"items": [1, 2, 3], "message": "Hello from the demo upstream"}),
        );
    }
    if parts.headers.get("x-echo").is_some_and(|v| v == "1") {
        let headers: Map<String, Value> = parts
            .headers
            .keys()
            .map(|k| {
                let values: Vec<Value> = parts
                    .headers
                    .get_all(k)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into())
                    .collect();
                (k.as_str().to_string(), Value::Array(values))
            })
            .collect();
        out.insert("query".into(), parts.uri.query().unwrap_or("").into());
        out.insert("headers".into(), Value::Object(headers));
        out.insert("body_bytes".into(), body_len.into());
    }
    let mut response = json_response(status, Value::Object(out));
    if let Some(usage) = parts.headers.get("x-usage-tokens") {
        if let Some(n) = usage
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            USAGE.fetch_add(n, Ordering::SeqCst);
        }
        response
            .headers_mut()
            .insert("x-usage-tokens", usage.clone());
    }
    if parts.headers.get("x-arrival").is_some_and(|v| v == "1") {
        response
            .headers_mut()
            .insert("x-arrived-us", arrived_us.into());
    }
    Ok(response)
}
