//! A load generator for rollout tests: workers that send unversioned
//! inference requests, one after the other, to the agents a deployment's
//! EndpointSlices list as ready (a client-side balancer, as a mesh sidecar or
//! kube-proxy would be), and record which version answered each one.
//!
//! A request that could not be connected never reached a server, so it is
//! tried again on the next endpoint (Envoy's `connect-failure` retry); the
//! count is kept. Anything else that is not a 200 is a failed request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};

/// One answered (or failed) request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the request was sent.
    pub sent: Instant,
    /// When the answer came.
    pub at: Instant,
    /// The version that answered (`model_version`), for a 200.
    pub version: Option<String>,
    /// HTTP status, or 0 when no answer came.
    pub status: u16,
    /// What went wrong, for anything but a 200.
    pub error: Option<String>,
}

impl Sample {
    /// Whether the request failed.
    pub fn failed(&self) -> bool {
        self.status != 200
    }
}

/// A point in a load: requests sent after it are the ones counted from it
/// (a request sent before and answered after belongs to what came before).
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    index: usize,
    /// When the mark was taken.
    pub at: Instant,
}

/// A running load.
#[derive(Debug)]
pub struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    retries: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

type Endpoints = Arc<RwLock<Vec<SocketAddr>>>;

/// The ready endpoints of Service `service`'s `http` port, from its EndpointSlices.
pub async fn ready_endpoints(
    api: &Api<EndpointSlice>,
    service: &str,
) -> anyhow::Result<Vec<SocketAddr>> {
    let slices = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await?;
    let mut out = Vec::new();
    for s in slices.items {
        let port = s
            .ports
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.name.as_deref() == Some("http"))
            .and_then(|p| p.port);
        let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for e in s.endpoints {
            if e.conditions.as_ref().and_then(|c| c.ready) != Some(true) {
                continue;
            }
            out.extend(
                e.addresses
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .map(|ip| SocketAddr::new(ip, port)),
            );
        }
    }
    out.sort();
    Ok(out)
}

impl Load {
    /// Starts `workers` workers sending `model`'s requests to the ready
    /// endpoints of Service `service` in `namespace`.
    pub async fn start(
        client: &kube::Client,
        namespace: &str,
        service: &str,
        model: &str,
        workers: usize,
    ) -> anyhow::Result<Self> {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
        let endpoints: Endpoints = Arc::new(RwLock::new(ready_endpoints(&api, service).await?));
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let retries = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        // The balancer's view follows the EndpointSlices.
        tasks.push(tokio::spawn({
            let (endpoints, stop, service) = (endpoints.clone(), stop.clone(), service.to_owned());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(now) = ready_endpoints(&api, &service).await
                        && let Ok(mut e) = endpoints.write()
                    {
                        *e = now;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
        let http: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        let body = Bytes::from(
            json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                   "data": ["the quick brown fox"]}]})
            .to_string(),
        );
        for worker in 0..workers {
            let (endpoints, stop, samples, retries, http, body, model) = (
                endpoints.clone(),
                stop.clone(),
                samples.clone(),
                retries.clone(),
                http.clone(),
                body.clone(),
                model.to_owned(),
            );
            tasks.push(tokio::spawn(async move {
                let mut next = worker;
                while !stop.load(Ordering::Relaxed) {
                    let sample = send(&http, &endpoints, &mut next, &model, &body, &retries).await;
                    if let Ok(mut s) = samples.lock() {
                        s.push(sample);
                    }
                }
            }));
        }
        Ok(Self {
            samples,
            retries,
            stop,
            tasks,
        })
    }

    /// Now, as a mark for [`Load::since`].
    pub fn mark(&self) -> Mark {
        Mark {
            index: self.samples.lock().map_or(0, |s| s.len()),
            at: Instant::now(),
        }
    }

    /// The samples of requests sent after `mark`.
    pub fn since(&self, mark: Mark) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|s| {
                s.get(mark.index..)
                    .unwrap_or_default()
                    .iter()
                    .filter(|x| x.sent >= mark.at)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `n` requests sent after `mark` are answered, and returns them.
    pub async fn take(
        &self,
        mark: Mark,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Sample>> {
        let start = Instant::now();
        loop {
            let got = self.since(mark);
            if got.len() >= n {
                return Ok(got[..n].to_vec());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "only {} of {n} answers in {timeout:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Connection attempts tried again on another endpoint so far.
    pub fn connect_retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Stops the workers and returns every sample.
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn send(
    http: &Client<HttpConnector, Full<Bytes>>,
    endpoints: &Endpoints,
    next: &mut usize,
    model: &str,
    body: &Bytes,
    retries: &std::sync::atomic::AtomicU64,
) -> Sample {
    let sent = Instant::now();
    let failed = |status: u16, error: String| Sample {
        sent,
        at: Instant::now(),
        version: None,
        status,
        error: Some(error),
    };
    for _attempt in 0..100 {
        let target = endpoints.read().ok().and_then(|e| {
            (!e.is_empty()).then(|| {
                *next = next.wrapping_add(1);
                e[*next % e.len()]
            })
        });
        let Some(target) = target else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let request = http::Request::post(format!("http://{target}/v2/models/{model}/infer"))
            .header("content-type", "application/json")
            .body(Full::new(body.clone()));
        let request = match request {
            Ok(r) => r,
            Err(e) => return failed(0, e.to_string()),
        };
        match http.request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let bytes = match response.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return failed(status, format!("{target}: reading the answer: {e}")),
                };
                if status != 200 {
                    return failed(
                        status,
                        format!("{target}: {}", String::from_utf8_lossy(&bytes)),
                    );
                }
                let version = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v["model_version"].as_str().map(str::to_owned));
                return Sample {
                    sent,
                    at: Instant::now(),
                    version,
                    status,
                    error: None,
                };
            }
            Err(e) if e.is_connect() => {
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return failed(0, format!("{target}: {e:?}")),
        }
    }
    failed(0, "no endpoint could be connected to".to_owned())
}

/// How many of `samples` `version` answered.
pub fn count(samples: &[Sample], version: &str) -> usize {
    samples
        .iter()
        .filter(|s| s.version.as_deref() == Some(version))
        .count()
}
