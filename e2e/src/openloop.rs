//! An open-loop load generator for the fault tests: requests leave at a fixed
//! rate whatever the answers do (a slow or dead server does not slow the
//! sender down, as real clients do not wait for each other), each is sent
//! once, tagged with its own id (the OIP `id`, echoed in the answer), and
//! accounted for: ok, 4xx, 429, 5xx, transport error, timeout or missing.
//! Lost = 5xx + transport + timeout + missing.
//!
//! The client is endpoint-aware, like kube-proxy or an Envoy sidecar: it
//! watches the Service's EndpointSlices and sends each request to the next
//! ready endpoint. A request is never sent twice. When its TCP connection is
//! refused nothing was sent, and it goes to the next ready endpoint instead
//! (what Envoy's and gRPC's balancers do with an endpoint that refuses);
//! those are counted as `rerouted`, apart from the outcome.
//!
//! A share of the requests is slow (a long generation, 2 s and more), so that
//! every switch and every restart has requests in flight.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::{Value, json};

/// What one request became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with this request's own id.
    Ok,
    /// A 4xx other than 429.
    ClientError(u16),
    /// 429, with its Retry-After header.
    Throttled(Option<String>),
    /// A 5xx.
    ServerError(u16),
    /// The connection broke after the request was sent, or no endpoint
    /// could be connected to.
    Transport(String),
    /// No answer within the timeout.
    Timeout,
    /// No record of an answer: the answer carried another request's id, or
    /// the request never finished when the load ended.
    Missing(String),
}

impl Outcome {
    /// Whether the request is lost (5xx, transport, timeout, missing).
    pub fn lost(&self) -> bool {
        matches!(
            self,
            Self::ServerError(_) | Self::Transport(_) | Self::Timeout | Self::Missing(_)
        )
    }
}

/// One request, from the send to its outcome.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its number in the load (its tag is `<run>-<seq>`).
    pub seq: u64,
    /// Whether it was one of the slow requests.
    pub slow: bool,
    /// Where it went (None: no endpoint could take it).
    pub endpoint: Option<SocketAddr>,
    /// When it was due and sent.
    pub sent: Instant,
    /// When its outcome was known.
    pub done: Instant,
    /// What it became.
    pub outcome: Outcome,
    /// The version that answered a 200 (`model_version`).
    pub version: Option<String>,
    /// Endpoints that refused the connection before one took it.
    pub rerouted: u32,
}

impl Record {
    /// How long it took.
    pub fn latency(&self) -> Duration {
        self.done.duration_since(self.sent)
    }

    /// Whether it was in flight at `t` on `endpoint`: sent to it before `t`
    /// and not done before `t`.
    pub fn in_flight_at(&self, t: Instant, endpoint: SocketAddr) -> bool {
        self.endpoint == Some(endpoint) && self.sent <= t && self.done >= t
    }
}

/// What to send.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Namespace of the Service.
    pub namespace: String,
    /// The Service whose EndpointSlices name the endpoints.
    pub service: String,
    /// The model's name in the request path.
    pub model: String,
    /// Requests per second.
    pub rate: f64,
    /// Every how many requests one is slow (0: none).
    pub slow_every: u64,
    /// The request body (without `id`) of a fast request.
    pub fast: Value,
    /// The request body (without `id`) of a slow one.
    pub slow: Value,
    /// How long a request may take before it counts as a timeout.
    pub timeout: Duration,
}

impl Plan {
    /// Requests to a text-generation deployment: fast ones generate one
    /// token, every `slow_every`-th generates `slow_tokens` (2 s and more on
    /// SmolLM2 here).
    pub fn generation(
        namespace: &str,
        service: &str,
        model: &str,
        rate: f64,
        slow_every: u64,
        slow_tokens: u64,
    ) -> Self {
        let body = |tokens: u64| {
            json!({"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES",
                               "data": ["Once upon a time, in a small village by the sea,"]}],
                   "parameters": {"max_tokens": tokens}})
        };
        Self {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            model: model.to_owned(),
            rate,
            slow_every,
            fast: body(1),
            slow: body(slow_tokens),
            timeout: Duration::from_secs(60),
        }
    }
}

impl Plan {
    /// Requests to an embedding deployment (one short text each), none slow.
    pub fn embedding(namespace: &str, service: &str, model: &str, rate: f64) -> Self {
        let body = json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                      "data": ["the quick brown fox"]}]});
        Self {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            model: model.to_owned(),
            rate,
            slow_every: 0,
            fast: body.clone(),
            slow: body,
            timeout: Duration::from_secs(30),
        }
    }
}

type Endpoints = Arc<RwLock<Vec<SocketAddr>>>;

/// The ready endpoints of one Service's `http` port, as its EndpointSlices
/// say (ready and not terminating), by slice name.
fn ready_of(slices: &BTreeMap<String, EndpointSlice>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in slices.values() {
        let port = s
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("http"))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for e in &s.endpoints {
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready) == Some(true);
            let terminating = c.and_then(|c| c.terminating) == Some(true);
            if ready && !terminating {
                out.extend(
                    e.addresses
                        .iter()
                        .filter_map(|a| a.parse().ok())
                        .map(|ip| SocketAddr::new(ip, port)),
                );
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A running load.
#[derive(Debug)]
pub struct OpenLoop {
    plan: Plan,
    run: String,
    started: Instant,
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<Record>>>,
    scheduled: Arc<AtomicU64>,
    endpoints: Endpoints,
    http: Client<HttpConnector, Full<Bytes>>,
    watch: tokio::task::JoinHandle<()>,
    sender: tokio::task::JoinHandle<Vec<tokio::task::JoinHandle<()>>>,
}

impl OpenLoop {
    /// Starts sending `plan`'s requests once the Service has a ready endpoint.
    pub async fn start(client: &kube::Client, plan: Plan) -> anyhow::Result<Self> {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &plan.namespace);
        let endpoints: Endpoints = Arc::default();
        let watch = {
            let endpoints = endpoints.clone();
            let config = watcher::Config::default()
                .labels(&format!("kubernetes.io/service-name={}", plan.service));
            tokio::spawn(async move {
                let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
                let mut stream = watcher(api, config).default_backoff().boxed();
                let mut listing: Option<BTreeMap<String, EndpointSlice>> = None;
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(watcher::Event::Apply(s)) => {
                            slices.insert(s.metadata.name.clone().unwrap_or_default(), s);
                        }
                        Ok(watcher::Event::Delete(s)) => {
                            slices.remove(s.metadata.name.as_deref().unwrap_or_default());
                        }
                        Ok(watcher::Event::Init) => listing = Some(BTreeMap::new()),
                        Ok(watcher::Event::InitApply(s)) => {
                            if let Some(l) = listing.as_mut() {
                                l.insert(s.metadata.name.clone().unwrap_or_default(), s);
                            }
                        }
                        Ok(watcher::Event::InitDone) => {
                            if let Some(l) = listing.take() {
                                slices = l;
                            }
                        }
                        Err(_) => continue,
                    }
                    if listing.is_none()
                        && let Ok(mut e) = endpoints.write()
                    {
                        *e = ready_of(&slices);
                    }
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while endpoints.read().map(|e| e.is_empty()).unwrap_or(true) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "service {}/{} has no ready endpoint",
                plan.namespace,
                plan.service
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let run = format!("r{}", std::process::id());
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let scheduled = Arc::new(AtomicU64::new(0));
        let http: Client<HttpConnector, Full<Bytes>> = {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            connector.set_connect_timeout(Some(Duration::from_secs(2)));
            // One connection per request: a request is never written to a
            // pooled connection the server is closing.
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(connector)
        };
        let started = Instant::now();
        let sender = {
            let http = http.clone();
            let (plan, run, stop, records, scheduled, endpoints) = (
                plan.clone(),
                run.clone(),
                stop.clone(),
                records.clone(),
                scheduled.clone(),
                endpoints.clone(),
            );
            tokio::spawn(async move {
                let period = Duration::from_secs_f64(1.0 / plan.rate.max(0.001));
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut tasks = Vec::new();
                let mut next_endpoint = 0usize;
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    seq += 1;
                    scheduled.store(seq, Ordering::Relaxed);
                    let slow = plan.slow_every > 0 && seq.is_multiple_of(plan.slow_every);
                    let mut body = if slow {
                        plan.slow.clone()
                    } else {
                        plan.fast.clone()
                    };
                    let tag = format!("{run}-{seq}");
                    body["id"] = json!(tag);
                    next_endpoint = next_endpoint.wrapping_add(1);
                    let request = Request {
                        seq,
                        tag,
                        slow,
                        body: Bytes::from(body.to_string()),
                        start_at: next_endpoint,
                    };
                    let (http, endpoints, records, plan) = (
                        http.clone(),
                        endpoints.clone(),
                        records.clone(),
                        plan.clone(),
                    );
                    tasks.push(tokio::spawn(async move {
                        let record = send(&http, &endpoints, &plan, request).await;
                        if let Ok(mut r) = records.lock() {
                            r.push(record);
                        }
                    }));
                }
                tasks
            })
        };
        Ok(Self {
            plan,
            run,
            started,
            stop,
            records,
            scheduled,
            endpoints,
            http,
            watch,
            sender,
        })
    }

    /// The rate the load sends at.
    pub fn rate(&self) -> f64 {
        self.plan.rate
    }

    /// The endpoints the client sends to now.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.endpoints.read().map(|e| e.clone()).unwrap_or_default()
    }

    /// Sends one slow request to `endpoint` alone, outside the load's
    /// accounting (tag `<run>-probe`): a request known to be in flight on
    /// that endpoint when a fault strikes. Its record says what it became.
    pub fn probe(&self, endpoint: SocketAddr) -> tokio::task::JoinHandle<Record> {
        let mut body = self.plan.slow.clone();
        body["id"] = json!(format!("{}-probe", self.run));
        let request = Request {
            seq: 0,
            tag: format!("{}-probe", self.run),
            slow: true,
            body: Bytes::from(body.to_string()),
            start_at: 0,
        };
        let (http, plan) = (self.http.clone(), self.plan.clone());
        let only: Endpoints = Arc::new(RwLock::new(vec![endpoint]));
        tokio::spawn(async move { send(&http, &only, &plan, request).await })
    }

    /// The records so far (requests done).
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Waits until `n` requests sent after `since` are done, and returns them.
    pub async fn wait_done_after(
        &self,
        since: Instant,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Record>> {
        let deadline = Instant::now() + timeout;
        loop {
            let done: Vec<Record> = self
                .records()
                .into_iter()
                .filter(|r| r.sent >= since)
                .collect();
            if done.len() >= n {
                return Ok(done);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {n} requests done in {timeout:?}",
                done.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops sending, waits for every request sent to finish (each has its
    /// timeout), and accounts for all of them.
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let tasks = self.sender.await.unwrap_or_default();
        let sent = self.scheduled.load(Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        self.watch.abort();
        let mut records = self.records.lock().map(|r| r.clone()).unwrap_or_default();
        records.sort_by_key(|r| r.seq);
        let now = Instant::now();
        // A request that left no record is missing.
        let mut seen = vec![false; usize::try_from(sent).unwrap_or(0) + 1];
        for r in &records {
            if let Some(s) = usize::try_from(r.seq).ok().and_then(|i| seen.get_mut(i)) {
                *s = true;
            }
        }
        for (seq, found) in seen.iter().enumerate().skip(1) {
            if !found {
                records.push(Record {
                    seq: seq as u64,
                    slow: false,
                    endpoint: None,
                    sent: now,
                    done: now,
                    outcome: Outcome::Missing("no record of the request".into()),
                    version: None,
                    rerouted: 0,
                });
            }
        }
        Report {
            run: self.run,
            rate: self.plan.rate,
            seconds: self.started.elapsed().as_secs_f64(),
            records,
        }
    }
}

struct Request {
    seq: u64,
    tag: String,
    slow: bool,
    body: Bytes,
    start_at: usize,
}

async fn send(
    http: &Client<HttpConnector, Full<Bytes>>,
    endpoints: &Endpoints,
    plan: &Plan,
    request: Request,
) -> Record {
    let sent = Instant::now();
    let deadline = sent + plan.timeout;
    let mut rerouted = 0;
    let record = |endpoint, outcome, version, rerouted| Record {
        seq: request.seq,
        slow: request.slow,
        endpoint,
        sent,
        done: Instant::now(),
        outcome,
        version,
        rerouted,
    };
    let ready = endpoints.read().map(|e| e.clone()).unwrap_or_default();
    if ready.is_empty() {
        return record(
            None,
            Outcome::Transport("no ready endpoint".into()),
            None,
            0,
        );
    }
    // Each ready endpoint at most once, starting from this request's turn.
    for i in 0..ready.len() {
        let target = ready[(request.start_at + i) % ready.len()];
        let req = http::Request::post(format!("http://{target}/v2/models/{}/infer", plan.model))
            .header("content-type", "application/json")
            .body(Full::new(request.body.clone()));
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                return record(
                    Some(target),
                    Outcome::Transport(e.to_string()),
                    None,
                    rerouted,
                );
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = tokio::time::timeout(left, async {
            let response = match http.request(req).await {
                Ok(r) => r,
                Err(e) if e.is_connect() => return Err(None),
                Err(e) => return Err(Some(format!("{e:?}"))),
            };
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| Some(format!("reading the answer: {e:?}")))?
                .to_bytes();
            Ok((status, retry_after, body))
        })
        .await;
        let (status, retry_after, body) = match answer {
            Err(_) => return record(Some(target), Outcome::Timeout, None, rerouted),
            // Refused: nothing was sent; the next endpoint takes it.
            Ok(Err(None)) => {
                rerouted += 1;
                continue;
            }
            Ok(Err(Some(e))) => return record(Some(target), Outcome::Transport(e), None, rerouted),
            Ok(Ok(a)) => a,
        };
        let outcome = match status {
            200 => {
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                if v["id"].as_str() != Some(request.tag.as_str()) {
                    Outcome::Missing(format!(
                        "the answer carries id {:?}, not {:?}",
                        v["id"], request.tag
                    ))
                } else {
                    let version = v["model_version"].as_str().map(str::to_owned);
                    return record(Some(target), Outcome::Ok, version, rerouted);
                }
            }
            429 => Outcome::Throttled(retry_after),
            400..=499 => Outcome::ClientError(status),
            _ => Outcome::ServerError(status),
        };
        return record(Some(target), outcome, None, rerouted);
    }
    record(
        None,
        Outcome::Transport("every ready endpoint refused the connection".into()),
        None,
        rerouted,
    )
}

/// Every request of a load, accounted for.
#[derive(Debug, Clone)]
pub struct Report {
    /// The tag prefix of this load.
    pub run: String,
    /// Requests per second sent.
    pub rate: f64,
    /// How long it ran.
    pub seconds: f64,
    /// One record per request sent, by number.
    pub records: Vec<Record>,
}

/// Counts by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Requests sent.
    pub sent: usize,
    /// 200s.
    pub ok: usize,
    /// 4xx other than 429.
    pub client_errors: usize,
    /// 429s.
    pub throttled: usize,
    /// 429s without a Retry-After header.
    pub throttled_without_retry_after: usize,
    /// 5xx.
    pub server_errors: usize,
    /// Transport errors.
    pub transport: usize,
    /// Timeouts.
    pub timeouts: usize,
    /// Missing answers.
    pub missing: usize,
    /// 5xx + transport + timeouts + missing.
    pub lost: usize,
    /// Slow requests, and how many of them took 2 s or more.
    pub slow: usize,
    /// Slow requests answered after 2 s or more.
    pub slow_over_2s: usize,
    /// Requests that went to another endpoint because one refused the connection.
    pub rerouted: usize,
}

impl Report {
    /// The counts of `records`.
    pub fn count(records: &[Record]) -> Counts {
        let mut c = Counts {
            sent: records.len(),
            ..Counts::default()
        };
        for r in records {
            match &r.outcome {
                Outcome::Ok => c.ok += 1,
                Outcome::ClientError(_) => c.client_errors += 1,
                Outcome::Throttled(ra) => {
                    c.throttled += 1;
                    if ra.is_none() {
                        c.throttled_without_retry_after += 1;
                    }
                }
                Outcome::ServerError(_) => c.server_errors += 1,
                Outcome::Transport(_) => c.transport += 1,
                Outcome::Timeout => c.timeouts += 1,
                Outcome::Missing(_) => c.missing += 1,
            }
            if r.outcome.lost() {
                c.lost += 1;
            }
            if r.slow {
                c.slow += 1;
                if r.latency() >= Duration::from_secs(2) {
                    c.slow_over_2s += 1;
                }
            }
            if r.rerouted > 0 {
                c.rerouted += 1;
            }
        }
        c
    }

    /// The counts of the whole load.
    pub fn counts(&self) -> Counts {
        Self::count(&self.records)
    }

    /// The lost requests.
    pub fn lost(&self) -> Vec<&Record> {
        self.records.iter().filter(|r| r.outcome.lost()).collect()
    }

    /// The figures as JSON, with the rate they were measured at.
    pub fn summary(&self) -> Value {
        json!({"rate_per_second": self.rate, "seconds": self.seconds, "counts": self.counts()})
    }
}
