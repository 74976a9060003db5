//! Dynamic batching: one bounded queue and one worker thread per model version.
//!
//! Requests queue in arrival order. The worker takes the first one, then keeps
//! taking queued requests of the same kind until the batch reaches the
//! effective max batch size (the policy's, capped by the model's) or the policy's
//! max queue delay has passed since it took the first; then it asks
//! [`Admission`], runs the batch on the backend and sends each caller its part.
//! The policy is read from a `watch` channel before every batch, so changes to
//! the node policy apply from the next batch on.
//!
//! Generation requests run one at a time, in arrival order, each its own batch
//! of one: every token of one request is sent from this one thread, in order,
//! through that request's channel, so a client's tokens are never reordered.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc as tokio_mpsc, oneshot, watch};

use crate::admission::{Admission, Rejection};
use crate::backend::{Backend, GenerateParams, Generation};
use crate::error::{Result, ServeError};
use crate::metrics::Metrics;
use crate::tensor::Tensor;

/// The node's batching policy; live-updated through a `watch` channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPolicy {
    /// The most rows per batch (further capped by the model's own max batch size).
    pub max_batch_size: usize,
    /// How long the worker waits for more requests after taking the first of a batch.
    pub max_queue_delay: Duration,
    /// The most requests waiting per model version; more are answered 429.
    pub max_queue_depth: usize,
    /// The longest a request waits in the queue before its batch starts; one
    /// that waited longer is answered 429 with Retry-After instead of being
    /// run late. Under overload latency stays bounded and the client is told
    /// when to come back, instead of timing out.
    pub max_queue_wait: Duration,
}

impl Default for BatchPolicy {
    /// The `default` preset: batches of 4, 5 ms delay, 1024 waiting requests,
    /// at most 10 s in the queue.
    fn default() -> Self {
        Self {
            max_batch_size: 4,
            max_queue_delay: Duration::from_millis(5),
            max_queue_depth: 1024,
            max_queue_wait: MAX_QUEUE_WAIT,
        }
    }
}

/// The default bound on the time a request waits in the queue.
pub const MAX_QUEUE_WAIT: Duration = Duration::from_secs(10);

/// What a request that waited too long is told: try again in a second.
const QUEUE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A request in the queue, with when it arrived.
#[derive(Debug)]
pub(crate) struct Queued {
    at: Instant,
    work: Work,
}

/// Where one request's answer goes.
type Reply<T> = oneshot::Sender<Result<T>>;

/// One embedding vector per text.
type Embeddings = Vec<Vec<f32>>;

/// One queued request and where its answer goes.
#[derive(Debug)]
pub(crate) enum Work {
    Embed {
        texts: Vec<String>,
        reply: Reply<Embeddings>,
    },
    Infer {
        inputs: Vec<Tensor>,
        reply: Reply<Vec<Tensor>>,
    },
    Generate {
        prompt: String,
        params: GenerateParams,
        tokens: tokio_mpsc::UnboundedSender<String>,
        reply: Reply<Generation>,
    },
}

impl Work {
    fn rows(&self) -> usize {
        match self {
            Self::Embed { texts, .. } => texts.len(),
            Self::Infer { .. } | Self::Generate { .. } => 1,
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Self::Embed { .. } => 0,
            Self::Infer { .. } => 1,
            Self::Generate { .. } => 2,
        }
    }

    /// Whether the caller has gone away (nothing left to answer).
    fn abandoned(&self) -> bool {
        match self {
            Self::Embed { reply, .. } => reply.is_closed(),
            Self::Infer { reply, .. } => reply.is_closed(),
            Self::Generate { reply, tokens, .. } => reply.is_closed() && tokens.is_closed(),
        }
    }

    fn fail(self, error: ServeError) {
        // A caller that went away needs no answer: ignoring the send result is right.
        match self {
            Self::Embed { reply, .. } => drop(reply.send(Err(error))),
            Self::Infer { reply, .. } => drop(reply.send(Err(error))),
            Self::Generate { reply, .. } => drop(reply.send(Err(error))),
        }
    }
}

/// What every worker shares: the live policy, admission and metrics.
#[derive(Clone)]
pub(crate) struct WorkerContext {
    pub(crate) policy: watch::Receiver<BatchPolicy>,
    pub(crate) admission: Arc<dyn Admission>,
    pub(crate) metrics: Metrics,
}

/// The sending half of a model version's queue.
#[derive(Debug)]
pub(crate) struct Queue {
    tx: Sender<Queued>,
    depth: Arc<AtomicUsize>,
    policy: watch::Receiver<BatchPolicy>,
    metrics: Metrics,
    model: String,
    version: String,
    model_max_batch: usize,
}

impl Queue {
    /// Starts the worker thread of `model`/`version`; it ends once the queue is
    /// dropped and drained.
    pub(crate) fn start(
        model: &str,
        version: &str,
        backend: Arc<dyn Backend>,
        context: &WorkerContext,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let depth = Arc::new(AtomicUsize::new(0));
        let model_max_batch = backend.metadata().max_batch_size;
        let worker = Worker {
            rx,
            depth: depth.clone(),
            backend,
            context: context.clone(),
            model: model.to_owned(),
            version: version.to_owned(),
        };
        std::thread::Builder::new()
            .name(format!("serve-{model}"))
            .spawn(move || worker.run())
            .map_err(|e| {
                ServeError::Internal(format!("cannot start the worker of {model}: {e}"))
            })?;
        Ok(Self {
            tx,
            depth,
            policy: context.policy.clone(),
            metrics: context.metrics.clone(),
            model: model.to_owned(),
            version: version.to_owned(),
            model_max_batch,
        })
    }

    /// Queues `work`, or refuses it when the queue is full or the batch too big.
    pub(crate) fn submit(&self, work: Work) -> Result<()> {
        if self.model_max_batch > 0 && work.rows() > self.model_max_batch {
            return Err(ServeError::invalid(format!(
                "batch of {} rows exceeds the max batch size {} of model {}",
                work.rows(),
                self.model_max_batch,
                self.model
            )));
        }
        let bound = self.policy.borrow().max_queue_depth;
        let before = self.depth.fetch_add(1, Ordering::AcqRel);
        if before >= bound {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            // Overload, not a fault: 429 with Retry-After, as for a request
            // that waited too long.
            return Err(ServeError::Throttled {
                message: format!(
                    "the queue of model {} version {} is full ({bound} requests waiting); try again later",
                    self.model, self.version
                ),
                retry_after: QUEUE_RETRY_AFTER,
            });
        }
        self.metrics
            .set_queue_depth(&self.model, &self.version, before + 1);
        let queued = Queued {
            at: Instant::now(),
            work,
        };
        self.tx.send(queued).map_err(|_| {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            ServeError::Unavailable(format!(
                "model {} version {} is shutting down",
                self.model, self.version
            ))
        })
    }
}

/// The receiving half: forms batches and runs them.
struct Worker {
    rx: Receiver<Queued>,
    depth: Arc<AtomicUsize>,
    backend: Arc<dyn Backend>,
    context: WorkerContext,
    model: String,
    version: String,
}

impl Worker {
    fn run(self) {
        let mut carry: Option<Queued> = None;
        loop {
            let first = match carry.take() {
                Some(work) => work,
                None => match self.rx.recv() {
                    Ok(work) => self.taken(work),
                    Err(_) => break,
                },
            };
            let policy = self.context.policy.borrow().clone();
            let (batch, _, next) = self.form_batch(first, &policy);
            carry = next;
            self.execute(batch, policy.max_queue_wait);
        }
        tracing::debug!(model = %self.model, version = %self.version, "worker stopped");
    }

    fn taken(&self, work: Queued) -> Queued {
        let left = self.depth.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        self.context
            .metrics
            .set_queue_depth(&self.model, &self.version, left);
        work
    }

    /// Gathers queued work of the same kind after `first`; returns the batch,
    /// its rows and the request that did not fit (it starts the next batch).
    fn form_batch(
        &self,
        first: Queued,
        policy: &BatchPolicy,
    ) -> (Vec<Queued>, usize, Option<Queued>) {
        let model_cap = self.backend.metadata().max_batch_size.max(1);
        let cap = policy.max_batch_size.clamp(1, model_cap);
        let mut rows = first.work.rows();
        let kind = first.work.kind();
        let mut batch = vec![first];
        if matches!(batch.first().map(|q| &q.work), Some(Work::Generate { .. })) {
            return (batch, rows, None);
        }
        let deadline = Instant::now() + policy.max_queue_delay;
        while rows < cap {
            let wait = deadline.saturating_duration_since(Instant::now());
            let next = match self.rx.recv_timeout(wait) {
                Ok(work) => self.taken(work),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            };
            if next.work.kind() != kind || rows + next.work.rows() > cap {
                return (batch, rows, Some(next));
            }
            rows += next.work.rows();
            batch.push(next);
        }
        (batch, rows, None)
    }

    fn execute(&self, batch: Vec<Queued>, max_wait: Duration) {
        let mut live = Vec::with_capacity(batch.len());
        for q in batch {
            if q.work.abandoned() {
                continue;
            }
            let waited = q.at.elapsed();
            if waited > max_wait {
                q.work.fail(ServeError::Throttled {
                    message: format!(
                        "model {} version {} is overloaded: the request waited {:.1} s in its queue (at most {:.0} s)",
                        self.model,
                        self.version,
                        waited.as_secs_f64(),
                        max_wait.as_secs_f64()
                    ),
                    retry_after: QUEUE_RETRY_AFTER,
                });
            } else {
                live.push(q.work);
            }
        }
        let batch = live;
        if batch.is_empty() {
            return;
        }
        let rows: usize = batch.iter().map(Work::rows).sum();
        let permit = match self
            .context
            .admission
            .admit(&self.model, &self.version, rows)
        {
            Ok(permit) => permit,
            Err(rejection) => {
                let error = match rejection {
                    Rejection::Throttled { retry_after } => ServeError::Throttled {
                        message: format!(
                            "model {} version {} is throttled by the node policy",
                            self.model, self.version
                        ),
                        retry_after,
                    },
                    Rejection::Refused { reason } => ServeError::Unavailable(reason),
                };
                batch.into_iter().for_each(|w| w.fail(error.clone()));
                return;
            }
        };
        self.context
            .metrics
            .record_batch(&self.model, &self.version, rows);
        let mut embeds = Vec::new();
        let mut infers = Vec::new();
        for work in batch {
            match work {
                Work::Embed { texts, reply } => embeds.push((texts, reply)),
                Work::Infer { inputs, reply } => infers.push((inputs, reply)),
                Work::Generate {
                    prompt,
                    params,
                    tokens,
                    reply,
                } => {
                    self.generate(&prompt, &params, &tokens, reply);
                }
            }
        }
        if !embeds.is_empty() {
            self.embed(embeds);
        }
        if !infers.is_empty() {
            self.infer(infers);
        }
        drop(permit);
    }

    fn embed(&self, jobs: Vec<(Vec<String>, Reply<Embeddings>)>) {
        let mut counts = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut texts = Vec::new();
        for (job_texts, reply) in jobs {
            counts.push(job_texts.len());
            replies.push(reply);
            texts.extend(job_texts);
        }
        let result = guarded(|| self.backend.embed(&texts)).and_then(|vectors| {
            if vectors.len() == texts.len() {
                Ok(vectors)
            } else {
                Err(ServeError::Internal(format!(
                    "the backend returned {} embeddings for {} texts",
                    vectors.len(),
                    texts.len()
                )))
            }
        });
        fan_out(result, counts, replies);
    }

    fn infer(&self, jobs: Vec<(Vec<Tensor>, Reply<Vec<Tensor>>)>) {
        let (inputs, replies): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
        let result = guarded(|| self.backend.infer(&inputs)).and_then(|outputs| {
            if outputs.len() == inputs.len() {
                Ok(outputs)
            } else {
                Err(ServeError::Internal(format!(
                    "the backend answered {} of {} requests",
                    outputs.len(),
                    inputs.len()
                )))
            }
        });
        match result {
            Ok(outputs) => {
                for (output, reply) in outputs.into_iter().zip(replies) {
                    let _ = reply.send(Ok(output));
                }
            }
            Err(error) => replies
                .into_iter()
                .for_each(|r| drop(r.send(Err(error.clone())))),
        }
    }

    fn generate(
        &self,
        prompt: &str,
        params: &GenerateParams,
        tokens: &tokio_mpsc::UnboundedSender<String>,
        reply: Reply<Generation>,
    ) {
        let mut pieces = 0u64;
        let result = guarded(|| {
            self.backend.generate(prompt, params, &mut |piece: &str| {
                pieces += 1;
                match tokens.send(piece.to_owned()) {
                    Ok(()) => std::ops::ControlFlow::Continue(()),
                    Err(_) => std::ops::ControlFlow::Break(()),
                }
            })
        });
        let generated = match &result {
            Ok(generation) => generation.completion_tokens as u64,
            Err(_) => pieces,
        };
        self.context
            .metrics
            .add_tokens(&self.model, &self.version, generated);
        let _ = reply.send(result);
    }
}

/// Splits a batch result back into each caller's share.
fn fan_out<T>(result: Result<Vec<T>>, counts: Vec<usize>, replies: Vec<Reply<Vec<T>>>) {
    match result {
        Ok(items) => {
            let mut items = items.into_iter();
            for (count, reply) in counts.into_iter().zip(replies) {
                let _ = reply.send(Ok(items.by_ref().take(count).collect()));
            }
        }
        Err(error) => replies
            .into_iter()
            .for_each(|r| drop(r.send(Err(error.clone())))),
    }
}

/// Runs backend code, turning a panic into an internal error so the worker lives on.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        tracing::error!(%message, "model backend panicked");
        Err(ServeError::Internal(format!(
            "the model backend failed: {message}"
        )))
    })
}

#[cfg(test)]
#[path = "batcher_tests.rs"]
mod tests;
