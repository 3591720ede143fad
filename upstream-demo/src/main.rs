//! upstream-demo: the demo API behind sluice. Answers every method and path with 200 and a
//! small JSON body; fast enough (hyper, keep-alive) never to be a benchmark's bottleneck.
//!
//! A request with the header `x-echo: 1` also gets its query, headers and body size back, so
//! tests can see exactly what the proxy forwarded.

use bytes::Bytes;
use clap::Parser;
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
use tokio::net::TcpListener;

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
}

fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?
        .block_on(serve(cli.listen))
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!("upstream-demo listening on {addr}");
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

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
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
    let body = Value::Object(out).to_string();
    let response = Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default();
    Ok(response)
}
