//! A TCP proxy between GoGrid's processes and kube-apiserver, which the fault
//! tests use to break their connections the way a flaky network or a load
//! balancer does: every connection cut at once (watches and requests in
//! flight), or new ones refused for a while. TLS passes through untouched.
//!
//! ```text
//! apiproxy --listen 10.244.0.1:6444 --upstream 10.244.0.1:6443 --control 127.0.0.1:6445
//! curl -X POST 127.0.0.1:6445/cut       # close every open connection now
//! curl -X POST 127.0.0.1:6445/block     # cut, and refuse new connections
//! curl -X POST 127.0.0.1:6445/unblock   # accept again
//! curl 127.0.0.1:6445/stats             # {"open":..,"accepted":..,"cuts":..,"blocked":..}
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Default)]
struct Stats {
    open: AtomicU64,
    accepted: AtomicU64,
    cuts: AtomicU64,
    blocked: AtomicBool,
}

fn arg(name: &str) -> anyhow::Result<SocketAddr> {
    let args: Vec<String> = std::env::args().collect();
    let value = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .with_context(|| format!("{name} ADDR is required"))?;
    value
        .parse()
        .with_context(|| format!("{name} {value:?}: not an address"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let listen = arg("--listen")?;
    let upstream = arg("--upstream")?;
    let control = arg("--control")?;
    let stats = Arc::new(Stats::default());
    // Each cut bumps the generation; every connection ends when it changes.
    let (cut_tx, cut_rx) = watch::channel(0u64);
    let cut_tx = Arc::new(cut_tx);
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let control = TcpListener::bind(control)
        .await
        .with_context(|| format!("binding {control}"))?;
    eprintln!(
        "apiproxy: {listen} -> {upstream}, control on {}",
        control.local_addr()?
    );
    tokio::spawn(serve_control(control, stats.clone(), cut_tx.clone()));
    loop {
        let (client, _) = listener.accept().await?;
        if stats.blocked.load(Ordering::Relaxed) {
            drop(client);
            continue;
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let (stats, mut cut) = (stats.clone(), cut_rx.clone());
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            stats.open.fetch_add(1, Ordering::Relaxed);
            cut.mark_unchanged();
            tokio::select! {
                _ = pipe(client, server) => {}
                _ = cut.changed() => {}
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Copies both ways until either side closes.
async fn pipe(mut a: TcpStream, mut b: TcpStream) {
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}

/// The control endpoint: one-line HTTP requests, one-line JSON answers.
async fn serve_control(listener: TcpListener, stats: Arc<Stats>, cut: Arc<watch::Sender<u64>>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let mut buf = vec![0u8; 1024];
        let n = conn.read(&mut buf).await.unwrap_or(0);
        let request = String::from_utf8_lossy(&buf[..n]);
        let path = request.split_whitespace().nth(1).unwrap_or("/");
        let cut_all = || {
            stats.cuts.fetch_add(1, Ordering::Relaxed);
            cut.send_modify(|g| *g += 1);
        };
        let status = match path {
            "/cut" => {
                cut_all();
                "200 OK"
            }
            "/block" => {
                stats.blocked.store(true, Ordering::Relaxed);
                cut_all();
                "200 OK"
            }
            "/unblock" => {
                stats.blocked.store(false, Ordering::Relaxed);
                "200 OK"
            }
            "/stats" => "200 OK",
            _ => "404 Not Found",
        };
        let body = format!(
            "{{\"open\":{},\"accepted\":{},\"cuts\":{},\"blocked\":{}}}\n",
            stats.open.load(Ordering::Relaxed),
            stats.accepted.load(Ordering::Relaxed),
            stats.cuts.load(Ordering::Relaxed),
            stats.blocked.load(Ordering::Relaxed)
        );
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(answer.as_bytes()).await;
    }
}
