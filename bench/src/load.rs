//! A closed-loop load generator: `concurrency` keep-alive HTTP/1.1
//! connections, each sending the next request as soon as the last answer
//! arrived, for a fixed time; the same tool for every server compared. It runs
//! on one thread (pin it with taskset so it never competes with the server).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::stats::latency_ms;

/// One keep-alive HTTP/1.1 connection.
pub struct HttpClient {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl HttpClient {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            host: addr.to_string(),
        })
    }

    /// POSTs `body` as JSON and reads the whole answer; returns the status.
    pub async fn post(&mut self, path: &str, body: Bytes) -> anyhow::Result<u16> {
        self.sender.ready().await?;
        let request = http::Request::post(path)
            .header(http::header::HOST, &self.host)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok(status)
    }
}

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// The server, `http://HOST:PORT/PATH`.
    #[arg(long)]
    url: String,
    /// The request body (JSON).
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Connections, each with one request in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds (after `warmup`).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
}

fn split_url(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--url {url:?}: expected http://HOST:PORT/PATH"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = host
        .parse()
        .with_context(|| format!("--url {url:?}: {host:?} is not an IP:PORT"))?;
    Ok((addr, format!("/{path}")))
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    ok: u64,
    non_2xx: u64,
    errors: u64,
}

/// Runs the load and reports requests/s and latency.
pub fn run(a: &LoadArgs) -> anyhow::Result<Value> {
    let body = match (&a.body, &a.body_file) {
        (Some(b), _) => Bytes::from(b.clone()),
        (None, Some(f)) => {
            Bytes::from(std::fs::read(f).with_context(|| format!("reading {}", f.display()))?)
        }
        (None, None) => bail!("give --body or --body-file"),
    };
    let (addr, path) = split_url(&a.url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let warmup = Duration::from_secs_f64(a.warmup);
    let measured = Duration::from_secs_f64(a.seconds);
    let tallies = runtime.block_on(async {
        let start = Instant::now();
        let (from, until) = (start + warmup, start + warmup + measured);
        let mut tasks = Vec::new();
        for _ in 0..a.concurrency {
            let (body, path) = (body.clone(), path.clone());
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut client = HttpClient::connect(addr).await?;
                loop {
                    let t = Instant::now();
                    if t >= until {
                        return anyhow::Ok(tally);
                    }
                    let result = client.post(&path, body.clone()).await;
                    let done = Instant::now();
                    let counted = t >= from && done <= until;
                    match result {
                        Ok(status) if counted => {
                            if (200..300).contains(&status) {
                                tally.ok += 1;
                                tally.latencies.push(done - t);
                            } else {
                                tally.non_2xx += 1;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => {
                            if counted {
                                tally.errors += 1;
                            }
                            client = HttpClient::connect(addr).await?;
                        }
                    }
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await??);
        }
        anyhow::Ok(all)
    })?;
    let mut total = Tally::default();
    for t in tallies {
        total.latencies.extend(t.latencies);
        total.ok += t.ok;
        total.non_2xx += t.non_2xx;
        total.errors += t.errors;
    }
    Ok(json!({
        "url": a.url,
        "concurrency": a.concurrency,
        "seconds": a.seconds,
        "requests_s": total.ok as f64 / a.seconds,
        "ok": total.ok,
        "non_2xx": total.non_2xx,
        "errors": total.errors,
        "latency_ms": latency_ms(&total.latencies),
    }))
}
