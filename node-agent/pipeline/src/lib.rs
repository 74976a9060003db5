//! GoGrid model pipelines: load models with candle, plan their stages over the
//! node's devices and run them.
//!
//! [`load`] is the agent's entry point (call it on a blocking thread): it reads the file
//! once, verifying its checksum as it reads, plans the stages over the offered devices ([`plan`]), loads the
//! weights and returns a shareable [`Embedder`] or [`Generator`]. [`plan_load`] makes the
//! same plan from the file's headers alone, for the VRAM ledger before loading.

mod embed;
mod error;
pub mod estimate;
mod generate;
mod llama;
pub mod plan;
pub mod source;

use std::fmt;
use std::io::{BufReader, Cursor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use candle_core::Device;
use candle_core::quantized::gguf_file::Content;

pub use candle_core::quantized::GgmlDType;
pub use embed::{Embedder, Pooling};
pub use error::{Error, LoadError, Result};
pub use generate::{FinishReason, GenerateOutput, GenerateParams, Generator};
pub use llama::requant::{AUTO_TARGET, Requantize};
pub use llama::tokenizer::GgufTokenizer;
pub use llama::{KvCache, LlamaConfig, StagedLlama};
pub use plan::{DeviceOffer, ExplicitStage, PlanError};

use plan::{ModelBytes, PlannedStage};

/// The file format of a model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// GGUF (llama.cpp's format, quantized weights and tokenizer inside).
    Gguf,
    /// safetensors, with config.json and tokenizer.json beside it.
    Safetensors,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gguf => "gguf",
            Self::Safetensors => "safetensors",
        })
    }
}

/// What the model is loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// Sentence embeddings (safetensors BERT family).
    Embedding,
    /// Prompt completion (GGUF llama family).
    TextGeneration,
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Embedding => "embedding",
            Self::TextGeneration => "text-generation",
        })
    }
}

/// A device the model may use, with the bytes it may take there.
#[derive(Debug, Clone)]
pub struct DeviceBudget {
    /// The device's name in messages and status, e.g. `cpu` or `gpu0`.
    pub name: String,
    /// The candle device.
    pub device: Device,
    /// The bytes of weights the model may place on it.
    pub budget_bytes: u64,
}

impl DeviceBudget {
    /// The CPU, named `cpu`, with `budget_bytes`.
    pub fn cpu(budget_bytes: u64) -> Self {
        Self {
            name: "cpu".to_string(),
            device: Device::Cpu,
            budget_bytes,
        }
    }
}

/// What to load and where.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The weights file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// What it is for.
    pub task: Task,
    /// The expected sha256 (64 lowercase hex digits); checked before loading when given.
    pub sha256: Option<String>,
    /// The devices offered, in pipeline order.
    pub devices: Vec<DeviceBudget>,
    /// Explicit stages (device index into `devices`, layer range); empty: planned.
    pub stages: Vec<ExplicitStage>,
    /// Requantization of GGUF weights at load (default: none).
    pub requantize: Requantize,
}

/// One stage of a loaded (or planned) model, for status and the VRAM ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageInfo {
    /// The device's name.
    pub device: String,
    /// The first layer.
    pub first_layer: usize,
    /// The last layer (inclusive).
    pub last_layer: usize,
    /// Bytes of weights on the device (planned: the estimate; loaded: what was allocated).
    pub bytes: u64,
}

/// A loaded model, shareable between requests.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// An embedding model.
    Embedder(Arc<Embedder>),
    /// A text-generation model.
    Generator(Arc<Generator>),
}

impl Loaded {
    /// The stages as loaded, with the bytes each holds.
    pub fn stages(&self) -> Vec<StageInfo> {
        match self {
            Self::Embedder(e) => e.stages(),
            Self::Generator(g) => g.stages(),
        }
    }

    /// The task the model serves.
    pub fn task(&self) -> Task {
        match self {
            Self::Embedder(_) => Task::Embedding,
            Self::Generator(_) => Task::TextGeneration,
        }
    }
}

/// The file's parsed headers, ready to load from.
enum Prepared {
    Gguf(Content),
    Safetensors,
}

fn check_task(spec: &LoadSpec) -> Result<(), LoadError> {
    match (spec.format, spec.task) {
        (Format::Gguf, Task::TextGeneration) | (Format::Safetensors, Task::Embedding) => Ok(()),
        (format, task) => Err(LoadError::UnsupportedTask { format, task }),
    }
}

/// Parses the GGUF headers from the bytes already read, or from the file.
fn read_gguf(path: &Path, data: Option<&[u8]>) -> Result<Content, LoadError> {
    let parsed = match data {
        Some(data) => Content::read(&mut Cursor::new(data)),
        None => {
            let file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
            Content::read(&mut BufReader::new(file))
        }
    };
    parsed.map_err(|e| LoadError::InvalidFormat {
        path: path.to_path_buf(),
        format: Format::Gguf,
        reason: e.to_string(),
    })
}

/// Parses the headers and plans the stages, from the verified bytes when given (a load)
/// or from the file's headers (a plan).
fn prepare(
    spec: &LoadSpec,
    data: Option<&[u8]>,
) -> Result<(Prepared, Vec<PlannedStage>), LoadError> {
    check_task(spec)?;
    if spec.devices.is_empty() {
        return Err(LoadError::NoDevices);
    }
    match data {
        Some(data) => source::check_bytes(&spec.path, data, spec.format)?,
        None => source::check_format(&spec.path, spec.format)?,
    }
    let offers: Vec<DeviceOffer> = spec
        .devices
        .iter()
        .map(|d| DeviceOffer {
            name: d.name.clone(),
            budget: d.budget_bytes,
        })
        .collect();
    match spec.format {
        Format::Gguf => {
            let ct = read_gguf(&spec.path, data)?;
            let devices: Vec<&Device> = spec.devices.iter().map(|d| &d.device).collect();
            let bytes = llama::model_bytes(&ct, &spec.path, spec.requantize, &devices)?;
            let mut stages = plan::plan(&bytes, &offers, &spec.stages)?;
            // A tied head on the embedding's own device shares it rather than copy it.
            if let ([first, .., last], true) = (stages.as_mut_slice(), bytes.tied_embedding)
                && devices[first.device].same_device(devices[last.device])
            {
                last.bytes = last.bytes.saturating_sub(bytes.embedding);
            }
            Ok((Prepared::Gguf(ct), stages))
        }
        Format::Safetensors => {
            let n_layer = embed::read_config(&spec.path)?.num_hidden_layers;
            let total = match data {
                Some(data) => embed::weight_bytes_in(&spec.path, &mut Cursor::new(data))?,
                None => embed::weight_bytes(&spec.path)?,
            };
            let stages = plan_single_stage(total, n_layer, &offers, &spec.stages)?;
            Ok((Prepared::Safetensors, stages))
        }
    }
}

/// Plans a model that runs as one stage: on the device with the largest budget that fits
/// (the proportional planner's choice for one indivisible unit), or on the one explicit
/// stage, which must cover every layer.
fn plan_single_stage(
    total: u64,
    n_layer: usize,
    offers: &[DeviceOffer],
    explicit: &[ExplicitStage],
) -> Result<Vec<PlannedStage>, LoadError> {
    let one = ModelBytes {
        layers: vec![total],
        embedding: 0,
        head: 0,
        tied_embedding: false,
        per_stage: 0,
    };
    let explicit = match explicit {
        [] => vec![],
        [s] if s.first_layer == 0 && s.last_layer + 1 == n_layer => vec![ExplicitStage {
            device: s.device,
            first_layer: 0,
            last_layer: 0,
        }],
        _ => {
            return Err(PlanError::InvalidStages(format!(
                "an embedding model runs as one stage covering layers 0-{}",
                n_layer.saturating_sub(1)
            ))
            .into());
        }
    };
    let mut stages = plan::plan(&one, offers, &explicit)?;
    for s in &mut stages {
        s.last_layer = n_layer.saturating_sub(1);
    }
    Ok(stages)
}

fn stage_infos(spec: &LoadSpec, stages: &[PlannedStage]) -> Vec<StageInfo> {
    stages
        .iter()
        .map(|s| StageInfo {
            device: spec.devices[s.device].name.clone(),
            first_layer: s.first_layer,
            last_layer: s.last_layer,
            bytes: s.bytes,
        })
        .collect()
}

/// The stages [`load`] would make, with their estimated bytes, read from the file's
/// headers alone (the checksum is not verified: that reads the whole file).
pub fn plan_load(spec: &LoadSpec) -> Result<Vec<StageInfo>, LoadError> {
    let (_, stages) = prepare(spec, None)?;
    Ok(stage_infos(spec, &stages))
}

/// Verifies, plans and loads the model `spec` describes. The file is read once, hashed
/// while it is read, and only those verified bytes are parsed and loaded. Blocking and
/// long: call it off the async runtime.
pub fn load(spec: &LoadSpec) -> Result<Loaded, LoadError> {
    check_task(spec)?;
    let data = source::read_verified(&spec.path, spec.sha256.as_deref())?;
    let (prepared, stages) = prepare(spec, Some(&data))?;
    let infos = stage_infos(spec, &stages);
    match prepared {
        Prepared::Gguf(ct) => {
            let devices: Vec<&Device> = spec.devices.iter().map(|d| &d.device).collect();
            let mut generator =
                Generator::load(&spec.path, &data, &ct, &stages, &devices, spec.requantize)?;
            generator.set_stage_names(infos.into_iter().map(|s| s.device).collect());
            Ok(Loaded::Generator(Arc::new(generator)))
        }
        Prepared::Safetensors => {
            let device = stages
                .first()
                .and_then(|s| spec.devices.get(s.device))
                .ok_or(LoadError::NoDevices)?;
            let embedder =
                Embedder::load(&spec.path, &data, &device.device)?.with_stage(device.name.clone());
            Ok(Loaded::Embedder(Arc::new(embedder)))
        }
    }
}
