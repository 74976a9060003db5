//! Protocol-neutral inference: checks a typed request against the model's task,
//! queues it and shapes the answer. REST and gRPC both call [`run`].

use tokio::sync::{mpsc, oneshot};

use crate::backend::{GenerateParams, Generation, TaskKind};
use crate::batcher::Work;
use crate::error::{Result, ServeError};
use crate::registry::ModelVersion;
use crate::tensor::{DataType, ParamValue, Parameters, Tensor, TensorData};

/// An output the client asked for by name.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// Per-output parameters.
    pub parameters: Parameters,
}

/// A decoded inference request, whichever protocol it came through.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferRequest {
    /// Client-chosen id, echoed in the response (empty when none).
    pub id: String,
    /// Request parameters (generation settings live here).
    pub parameters: Parameters,
    /// Input tensors.
    pub inputs: Vec<Tensor>,
    /// Requested outputs; empty means all.
    pub outputs: Vec<RequestedOutput>,
}

/// The answer to an [`InferRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    /// Model that answered.
    pub model_name: String,
    /// Version that answered.
    pub model_version: String,
    /// The request's id.
    pub id: String,
    /// Response parameters.
    pub parameters: Parameters,
    /// Output tensors.
    pub outputs: Vec<Tensor>,
}

/// Runs `request` on `entry` and waits for its answer.
pub(crate) async fn run(entry: &ModelVersion, request: InferRequest) -> Result<InferResponse> {
    let InferRequest {
        id,
        parameters,
        inputs,
        outputs: requested,
    } = request;
    let mut response_parameters = Parameters::new();
    let outputs = match entry.task() {
        TaskKind::Embedding => embed(entry, inputs).await?,
        TaskKind::TextGeneration => {
            let (text, generation) = generate_text(entry, inputs, &parameters).await?;
            response_parameters.insert(
                "finish_reason".into(),
                ParamValue::String(generation.finish_reason.as_str().into()),
            );
            response_parameters.insert(
                "completion_tokens".into(),
                ParamValue::Int(i64::try_from(generation.completion_tokens).unwrap_or(i64::MAX)),
            );
            vec![text]
        }
        TaskKind::Tensor => infer_tensors(entry, inputs).await?,
    };
    Ok(InferResponse {
        model_name: entry.model().to_owned(),
        model_version: entry.version().to_owned(),
        id,
        parameters: response_parameters,
        outputs: select_outputs(outputs, &requested)?,
    })
}

/// Embeds `texts`; for the OpenAI endpoint and the tensor path alike.
pub(crate) async fn embed_texts(entry: &ModelVersion, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
    if texts.is_empty() {
        return Err(ServeError::invalid(
            "input: empty batch (no texts to embed)",
        ));
    }
    let (reply, answer) = oneshot::channel();
    entry.submit(Work::Embed { texts, reply })?;
    answer.await.map_err(|_| worker_gone(entry))?
}

/// Queues a generation; tokens arrive on the first receiver, the summary on the second.
pub(crate) fn start_generation(
    entry: &ModelVersion,
    prompt: String,
    params: GenerateParams,
) -> Result<(
    mpsc::UnboundedReceiver<String>,
    oneshot::Receiver<Result<Generation>>,
)> {
    let (tokens, token_rx) = mpsc::unbounded_channel();
    let (reply, answer) = oneshot::channel();
    entry.submit(Work::Generate {
        prompt,
        params,
        tokens,
        reply,
    })?;
    Ok((token_rx, answer))
}

pub(crate) fn worker_gone(entry: &ModelVersion) -> ServeError {
    ServeError::Unavailable(format!(
        "model {} version {} stopped before answering",
        entry.model(),
        entry.version()
    ))
}

async fn embed(entry: &ModelVersion, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
    let input = single_bytes_input(inputs, "embedding")?;
    let count = input.data.len();
    let texts = utf8_elements(input)?;
    let vectors = embed_texts(entry, texts).await?;
    let dim = vectors.first().map_or(0, Vec::len);
    if vectors.iter().any(|v| v.len() != dim) {
        return Err(ServeError::Internal(
            "the backend returned embeddings of different sizes".into(),
        ));
    }
    let name = entry
        .metadata()
        .outputs
        .first()
        .map_or("embedding", |o| o.name.as_str());
    let data = TensorData::F32(vectors.into_iter().flatten().collect());
    Ok(vec![Tensor::new(name, vec![count, dim], data)?])
}

async fn generate_text(
    entry: &ModelVersion,
    inputs: Vec<Tensor>,
    parameters: &Parameters,
) -> Result<(Tensor, Generation)> {
    let input = match inputs.iter().position(|t| t.name == "text_input") {
        Some(i) if inputs.len() > 1 => inputs.into_iter().nth(i).into_iter().collect(),
        _ => inputs,
    };
    let input = single_bytes_input(input, "text generation")?;
    if input.data.len() != 1 {
        return Err(ServeError::invalid(format!(
            "{}: text generation takes exactly one prompt, got {}",
            input.name,
            input.data.len()
        )));
    }
    let prompt = utf8_elements(input)?.concat();
    let params = generate_params(parameters)?;
    let (mut tokens, answer) = start_generation(entry, prompt, params)?;
    let mut text = String::new();
    while let Some(piece) = tokens.recv().await {
        text.push_str(&piece);
    }
    let generation = answer.await.map_err(|_| worker_gone(entry))??;
    let tensor = Tensor::new(
        "text_output",
        vec![1],
        TensorData::Bytes(vec![text.into_bytes()]),
    )?;
    Ok((tensor, generation))
}

async fn infer_tensors(entry: &ModelVersion, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
    if inputs.is_empty() {
        return Err(ServeError::invalid(
            "inputs: empty (the request has no input tensors)",
        ));
    }
    check_declared_inputs(entry, &inputs)?;
    let (reply, answer) = oneshot::channel();
    entry.submit(Work::Infer { inputs, reply })?;
    answer.await.map_err(|_| worker_gone(entry))?
}

fn check_declared_inputs(entry: &ModelVersion, inputs: &[Tensor]) -> Result<()> {
    let declared = &entry.metadata().inputs;
    if declared.is_empty() {
        return Ok(());
    }
    for input in inputs {
        let meta = declared
            .iter()
            .find(|m| m.name == input.name)
            .ok_or_else(|| {
                ServeError::invalid(format!(
                    "inputs: unknown input {:?} for this model",
                    input.name
                ))
            })?;
        if meta.datatype != input.datatype() {
            return Err(ServeError::invalid(format!(
                "{}: datatype {}, expected {}",
                input.name,
                input.datatype(),
                meta.datatype
            )));
        }
        let fits = meta.shape.len() == input.shape.len()
            && meta
                .shape
                .iter()
                .zip(&input.shape)
                .all(|(&m, &d)| m < 0 || m as usize == d);
        if !fits {
            return Err(ServeError::invalid(format!(
                "{}: shape {:?} does not match the declared shape {:?}",
                input.name, input.shape, meta.shape
            )));
        }
    }
    if let Some(missing) = declared
        .iter()
        .find(|m| !inputs.iter().any(|i| i.name == m.name))
    {
        return Err(ServeError::invalid(format!(
            "inputs: missing input {:?}",
            missing.name
        )));
    }
    Ok(())
}

fn single_bytes_input(inputs: Vec<Tensor>, task: &str) -> Result<Tensor> {
    let count = inputs.len();
    let mut inputs = inputs.into_iter();
    match (inputs.next(), count) {
        (Some(input), 1) if input.datatype() == DataType::Bytes => Ok(input),
        (Some(input), 1) => Err(ServeError::invalid(format!(
            "{}: datatype {}, expected BYTES",
            input.name,
            input.datatype()
        ))),
        _ => Err(ServeError::invalid(format!(
            "inputs: {task} models take exactly one BYTES input, got {count}"
        ))),
    }
}

fn utf8_elements(input: Tensor) -> Result<Vec<String>> {
    let TensorData::Bytes(elements) = input.data else {
        return Err(ServeError::invalid(format!(
            "{}: expected BYTES",
            input.name
        )));
    };
    elements
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| {
            String::from_utf8(bytes).map_err(|_| {
                ServeError::invalid(format!("{}: element {i} is not valid UTF-8", input.name))
            })
        })
        .collect()
}

/// Reads generation settings from request parameters.
pub(crate) fn generate_params(parameters: &Parameters) -> Result<GenerateParams> {
    let mut params = GenerateParams::default();
    for (name, value) in parameters {
        let bad = |expected: &str| {
            ServeError::invalid(format!(
                "parameters.{name}: expected {expected}, got {value:?}"
            ))
        };
        match name.as_str() {
            "max_tokens" => {
                let n = value
                    .as_u64()
                    .ok_or_else(|| bad("a non-negative integer"))?;
                params.max_tokens = usize::try_from(n).map_err(|_| bad("a smaller integer"))?;
            }
            "temperature" => {
                params.temperature = Some(value.as_f64().ok_or_else(|| bad("a number"))?)
            }
            "top_p" => params.top_p = Some(value.as_f64().ok_or_else(|| bad("a number"))?),
            "seed" => {
                params.seed = Some(
                    value
                        .as_u64()
                        .ok_or_else(|| bad("a non-negative integer"))?,
                )
            }
            "stop" => match value {
                ParamValue::String(s) => params.stop = vec![s.clone()],
                _ => return Err(bad("a string")),
            },
            _ => {}
        }
    }
    Ok(params)
}

fn select_outputs(outputs: Vec<Tensor>, requested: &[RequestedOutput]) -> Result<Vec<Tensor>> {
    if requested.is_empty() {
        return Ok(outputs);
    }
    let mut outputs: Vec<Option<Tensor>> = outputs.into_iter().map(Some).collect();
    requested
        .iter()
        .enumerate()
        .map(|(i, wanted)| {
            outputs
                .iter_mut()
                .find(|o| o.as_ref().is_some_and(|t| t.name == wanted.name))
                .and_then(Option::take)
                .ok_or_else(|| {
                    ServeError::invalid(format!("outputs[{i}]: unknown output {:?}", wanted.name))
                })
        })
        .collect()
}
