//! The engine alone: SmolLM2 decode/prefill, MiniLM embeddings, memory bandwidth.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use gogrid_pipeline::{
    DeviceBudget, Embedder, Format, GgmlDType, LoadSpec, Loaded, Requantize, Task, load,
};
use serde_json::{Value, json};

use crate::stats::{latency_ms, median_of};

/// The thread count the engine runs with, which must be the one asked for:
/// candle and the tokenizer read `RAYON_NUM_THREADS` / `CANDLE_NUM_THREADS`
/// once, at first use, so the caller sets them (hack/bench.sh does).
pub fn check_threads(threads: usize) -> anyhow::Result<()> {
    for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        let set = std::env::var(var)
            .ok()
            .and_then(|v| v.parse::<usize>().ok());
        if set != Some(threads) {
            bail!("--threads {threads} needs {var}={threads} in the environment (it is {set:?})");
        }
    }
    Ok(())
}

fn load_model(
    path: PathBuf,
    format: Format,
    task: Task,
    requantize: Requantize,
) -> anyhow::Result<Loaded> {
    let spec = LoadSpec {
        path,
        format,
        task,
        sha256: None,
        devices: vec![DeviceBudget::cpu(64 << 30)],
        stages: Vec::new(),
        requantize,
    };
    Ok(load(&spec)?)
}

#[derive(clap::Args, Debug)]
pub struct LlmArgs {
    /// The GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// A JSON file with `prompt_ids` (the llama.cpp peer's output).
    #[arg(long)]
    prompt: PathBuf,
    /// Tokens generated after the prompt.
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    #[arg(long, default_value_t = 5)]
    reps: usize,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Requantize at load: off, auto, q8_0, q4_0.
    #[arg(long, default_value = "off")]
    requantize: String,
}

/// Prefill (the prompt in one forward) and decode (one token per forward,
/// greedy, never stopping early), as the llama.cpp peer measures them.
pub fn llm(a: &LlmArgs) -> anyhow::Result<Value> {
    check_threads(a.threads)?;
    let requantize = match a.requantize.as_str() {
        "off" => Requantize::Off,
        "auto" => Requantize::Auto,
        "q8_0" => Requantize::To(GgmlDType::Q8_0),
        "q4_0" => Requantize::To(GgmlDType::Q4_0),
        other => bail!("--requantize {other:?}: expected off, auto, q8_0 or q4_0"),
    };
    let peer: Value = serde_json::from_slice(
        &std::fs::read(&a.prompt).with_context(|| format!("reading {}", a.prompt.display()))?,
    )?;
    let prompt: Vec<u32> = serde_json::from_value(peer["prompt_ids"].clone())
        .context("the prompt file has no prompt_ids")?;
    let started = Instant::now();
    let Loaded::Generator(generator) = load_model(
        a.model.clone(),
        Format::Gguf,
        Task::TextGeneration,
        requantize,
    )?
    else {
        bail!("{} is not a text-generation model", a.model.display());
    };
    let load_s = started.elapsed().as_secs_f64();
    let model = generator.model();
    let argmax = |logits: &[f32]| {
        logits
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map_or(0, |(i, _)| i as u32)
    };
    // Warm-up: one short run.
    let mut cache = model.new_cache();
    let logits = model.forward(&prompt[..8.min(prompt.len())], 0, &mut cache)?;
    black_box(argmax(&logits));

    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    let mut generated = Vec::new();
    for rep in 0..a.reps {
        let mut cache = model.new_cache();
        let t = Instant::now();
        let logits = model.forward(&prompt, 0, &mut cache)?;
        prefill.push(prompt.len() as f64 / t.elapsed().as_secs_f64());
        let mut next = argmax(&logits);
        let mut ids = vec![next];
        let t = Instant::now();
        for i in 0..a.gen_tokens {
            let logits = model.forward(&[next], prompt.len() + i, &mut cache)?;
            next = argmax(&logits);
            ids.push(next);
        }
        decode.push(a.gen_tokens as f64 / t.elapsed().as_secs_f64());
        if rep == 0 {
            ids.truncate(a.gen_tokens);
            generated = ids;
        }
        eprintln!(
            "llm rep {rep}: prefill {:.1} tok/s, decode {:.1} tok/s",
            prefill[rep], decode[rep]
        );
    }
    let same_as_peer = peer["generated_ids"].as_array().map(|ids| {
        ids.iter()
            .zip(&generated)
            .take_while(|(p, g)| p.as_u64() == Some(u64::from(**g)))
            .count()
    });
    Ok(json!({
        "engine": "gogrid",
        "impl": format!("gogrid-pipeline (candle 0.11), kernels {}", gogrid_agent::node::kernels()),
        "model": a.model.file_name().map(|f| f.to_string_lossy().into_owned()),
        "requantize": a.requantize,
        "stages": format!("{:?}", generator.stages().iter().map(|s| (&s.device, s.first_layer, s.last_layer)).collect::<Vec<_>>()),
        "threads": a.threads,
        "load_s": load_s,
        "prompt_tokens": prompt.len(),
        "gen_tokens": a.gen_tokens,
        "prefill_tok_s": median_of(prefill),
        "decode_tok_s": median_of(decode),
        "generated_ids": generated,
        "tokens_equal_to_peer": same_as_peer,
    }))
}

#[derive(clap::Args, Debug)]
pub struct MinilmArgs {
    /// The model.safetensors (its folder holds tokenizer.json and config.json).
    #[arg(long)]
    model: PathBuf,
    /// bench/peers/minilm_inputs.json
    #[arg(long)]
    inputs: PathBuf,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 20)]
    reps: usize,
    #[arg(long, default_value_t = 200)]
    iters_8: usize,
    #[arg(long, default_value_t = 100)]
    iters_128: usize,
}

/// The fixed benchmark texts.
#[derive(serde::Deserialize, Debug)]
pub struct MinilmInputs {
    pub text_8: String,
    pub text_128: String,
    pub batch_32: Vec<String>,
}

impl MinilmInputs {
    pub fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        serde_json::from_slice(
            &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))
    }
}

/// Loads MiniLM as the agent does.
pub fn load_minilm(path: &std::path::Path) -> anyhow::Result<std::sync::Arc<Embedder>> {
    match load_model(
        path.to_owned(),
        Format::Safetensors,
        Task::Embedding,
        Requantize::Off,
    )? {
        Loaded::Embedder(e) => Ok(e),
        Loaded::Generator(_) => bail!("{} is not an embedding model", path.display()),
    }
}

fn time_calls(
    n: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        out.push(t.elapsed());
    }
    Ok(out)
}

/// Tokenization, forward, pooling and normalisation, timed per call as the
/// peers time `encode`.
pub fn minilm(a: &MinilmArgs) -> anyhow::Result<Value> {
    check_threads(a.threads)?;
    let inputs = MinilmInputs::read(&a.inputs)?;
    let t = Instant::now();
    let embedder = load_minilm(&a.model)?;
    let load_s = t.elapsed().as_secs_f64();
    let batch: Vec<&str> = inputs.batch_32.iter().map(String::as_str).collect();
    for _ in 0..10 {
        black_box(embedder.embed(&[&inputs.text_8])?);
    }
    black_box(embedder.embed(&batch)?);
    let l8 = time_calls(a.iters_8, || {
        black_box(embedder.embed(&[&inputs.text_8])?);
        Ok(())
    })?;
    let l128 = time_calls(a.iters_128, || {
        black_box(embedder.embed(&[&inputs.text_128])?);
        Ok(())
    })?;
    let b32 = time_calls(a.reps, || {
        black_box(embedder.embed(&batch)?);
        Ok(())
    })?;
    let head: Vec<f32> = embedder.embed(&[&inputs.text_8])?[0][..8].to_vec();
    Ok(json!({
        "engine": "gogrid",
        "impl": "gogrid-pipeline (candle 0.11 BERT, f32)",
        "threads": a.threads,
        "load_s": load_s,
        "latency_8_ms": latency_ms(&l8),
        "latency_128_ms": latency_ms(&l128),
        "batch32_sentences_s": median_of(b32.iter().map(|d| batch.len() as f64 / d.as_secs_f64()).collect()),
        "embedding_text_8_head": head,
    }))
}

#[derive(clap::Args, Debug)]
pub struct MembwArgs {
    /// Buffer size in MiB (well above the last-level cache).
    #[arg(long, default_value_t = 512)]
    mib: usize,
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

/// Read bandwidth of one thread summing a large buffer: what one decode
/// thread can stream weights at, so the ceiling of decode tokens/s is this
/// divided by the bytes read per token (the weights).
pub fn membw(a: &MembwArgs) -> Value {
    let words = a.mib * (1 << 20) / 8;
    let buffer: Vec<u64> = (0..words as u64).collect();
    let mut samples = Vec::new();
    for _ in 0..a.reps {
        let t = Instant::now();
        // Four independent sums keep the loop load-bound, not add-bound.
        let mut s = [0u64; 4];
        for chunk in buffer.chunks_exact(4) {
            for (acc, v) in s.iter_mut().zip(chunk) {
                *acc = acc.wrapping_add(*v);
            }
        }
        black_box(s);
        samples.push((words * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    json!({"read_gb_s": median_of(samples), "buffer_mib": a.mib})
}
