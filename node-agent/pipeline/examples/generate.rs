//! Completes a prompt with a GGUF llama and reports decode speed: a manual check and an
//! informal benchmark (`cargo run -p gogrid-pipeline --example generate --
//! MODEL.gguf "prompt" [max_tokens] [off|auto|q8_0|q4_0] [stages]`).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Instant;

use gogrid_pipeline::{
    DeviceBudget, ExplicitStage, Format, GenerateParams, GgmlDType, LoadSpec, Loaded, Requantize,
    Task, load,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, prompt, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: generate MODEL.gguf PROMPT [max_tokens] [off|auto|q8_0|q4_0] [stages]".into(),
        );
    };
    let max_tokens = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let requantize = match rest.get(1).map(String::as_str) {
        None | Some("off") => Requantize::Off,
        Some("auto") => Requantize::Auto,
        Some("q8_0") => Requantize::To(GgmlDType::Q8_0),
        Some("q4_0") => Requantize::To(GgmlDType::Q4_0),
        Some(other) => return Err(format!("unknown requantization {other}").into()),
    };
    let n_stages: usize = rest.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let devices: Vec<DeviceBudget> = (0..n_stages)
        .map(|i| DeviceBudget {
            name: format!("cpu{i}"),
            ..DeviceBudget::cpu(8 << 30)
        })
        .collect();
    let mut spec = LoadSpec {
        path: path.into(),
        format: Format::Gguf,
        task: Task::TextGeneration,
        sha256: None,
        devices,
        stages: Vec::<ExplicitStage>::new(),
        requantize,
    };
    let start = Instant::now();
    let Loaded::Generator(generator) = load(&spec)? else {
        return Err("not a generator".into());
    };
    eprintln!(
        "loaded in {:.2?}: {:?}",
        start.elapsed(),
        generator.stages()
    );
    spec.stages.clear();
    let prompt_ids = generator.tokenizer().encode(prompt)?;
    eprintln!("prompt tokens: {prompt_ids:?}");
    let params = GenerateParams {
        max_tokens,
        ..GenerateParams::default()
    };
    let mut first_token = None;
    let start = Instant::now();
    let out = generator.generate(prompt, &params, &mut |piece| {
        first_token.get_or_insert_with(Instant::now);
        print!("{piece}");
        true
    })?;
    let end = Instant::now();
    println!();
    eprintln!("tokens: {:?}", out.tokens);
    if let Some(first) = first_token {
        let decoded = out.completion_tokens.saturating_sub(1);
        eprintln!(
            "prompt+first token {:.2?}, decode {decoded} tokens at {:.1} tokens/s ({:?})",
            first - start,
            decoded as f64 / (end - first).as_secs_f64(),
            out.finish_reason,
        );
    }
    Ok(())
}
