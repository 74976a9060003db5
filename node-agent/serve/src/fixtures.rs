//! Test backends and helpers for the unit tests.

use std::ops::ControlFlow;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::admission::{Admission, AdmitAll};
use crate::backend::{
    Backend, FinishReason, GenerateParams, Generation, ModelMetadata, TaskKind, TensorMeta,
    TokenSink,
};
use crate::batcher::{BatchPolicy, WorkerContext};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::tensor::DataType;

/// Embeds each text `"n"` as `[n]`; records batch sizes; optionally holds its
/// first call until released.
pub(crate) struct Recorder {
    meta: ModelMetadata,
    pub(crate) batches: Mutex<Vec<usize>>,
    gate: Mutex<Option<(Sender<()>, Receiver<()>)>>,
}

impl Recorder {
    pub(crate) fn new(max_batch_size: usize) -> Self {
        Self {
            meta: ModelMetadata {
                platform: "test".into(),
                inputs: vec![TensorMeta::new("text", DataType::Bytes, vec![-1])],
                outputs: vec![TensorMeta::new("embedding", DataType::F32, vec![-1, 1])],
                max_batch_size,
            },
            batches: Mutex::new(Vec::new()),
            gate: Mutex::new(None),
        }
    }

    /// Holds the first call: `started` fires when it begins, it ends once `release` fires.
    pub(crate) fn gated(max_batch_size: usize) -> (Arc<Self>, Receiver<()>, Sender<()>) {
        let recorder = Self::new(max_batch_size);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel();
        *recorder.gate.lock().expect("gate") = Some((started_tx, release_rx));
        (Arc::new(recorder), started_rx, release_tx)
    }

    pub(crate) fn batches(&self) -> Vec<usize> {
        self.batches.lock().expect("batches").clone()
    }
}

impl Backend for Recorder {
    fn metadata(&self) -> &ModelMetadata {
        &self.meta
    }

    fn task(&self) -> TaskKind {
        TaskKind::Embedding
    }

    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        self.batches.lock().expect("batches").push(texts.len());
        let gate = self.gate.lock().expect("gate").take();
        if let Some((started, release)) = gate {
            started.send(()).expect("test listens");
            release.recv().expect("test releases");
        }
        if texts.iter().any(|t| t == "panic") {
            panic!("asked to panic");
        }
        Ok(texts
            .iter()
            .map(|t| vec![t.parse().unwrap_or(-1.0)])
            .collect())
    }
}

/// Generates the pieces `"0 "`, `"1 "`, … up to `max_tokens`.
pub(crate) struct Counter;

impl Backend for Counter {
    fn metadata(&self) -> &ModelMetadata {
        static META: std::sync::OnceLock<ModelMetadata> = std::sync::OnceLock::new();
        META.get_or_init(|| ModelMetadata {
            platform: "test".into(),
            inputs: vec![TensorMeta::new("text_input", DataType::Bytes, vec![1])],
            outputs: vec![TensorMeta::new("text_output", DataType::Bytes, vec![1])],
            max_batch_size: 0,
        })
    }

    fn task(&self) -> TaskKind {
        TaskKind::TextGeneration
    }

    fn generate(
        &self,
        _prompt: &str,
        params: &GenerateParams,
        on_token: &mut TokenSink<'_>,
    ) -> Result<Generation> {
        for i in 0..params.max_tokens {
            if on_token(&format!("{i} ")) == ControlFlow::Break(()) {
                return Ok(Generation {
                    prompt_tokens: 1,
                    completion_tokens: i,
                    finish_reason: FinishReason::Cancelled,
                });
            }
        }
        Ok(Generation {
            prompt_tokens: 1,
            completion_tokens: params.max_tokens,
            finish_reason: FinishReason::Length,
        })
    }
}

/// A worker context with `policy` (sender kept by the caller) and `admission`.
pub(crate) fn context(
    policy: BatchPolicy,
    admission: Arc<dyn Admission>,
) -> (WorkerContext, watch::Sender<BatchPolicy>) {
    let (tx, rx) = watch::channel(policy);
    (
        WorkerContext {
            policy: rx,
            admission,
            metrics: Metrics::unregistered(),
        },
        tx,
    )
}

/// A context that admits everything.
pub(crate) fn open_context(policy: BatchPolicy) -> (WorkerContext, watch::Sender<BatchPolicy>) {
    context(policy, Arc::new(AdmitAll))
}
