//! The staged GGUF llama on tiny random models the tests write with candle's GGUF writer:
//! staging equivalence, planning, requantization, decoding, concurrency, streaming and the
//! load errors a user sees.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use common::tiny::TinyLlama;
use gogrid_pipeline::{
    DeviceBudget, Error, ExplicitStage, FinishReason, Format, GenerateParams, Generator, GgmlDType,
    LoadError, LoadSpec, Loaded, Requantize, Task, load, plan_load,
};

fn write(test: &str, model: &TinyLlama) -> PathBuf {
    let path = common::temp_dir(test).join("tiny.gguf");
    model.write(&path);
    path
}

fn cpus(n: usize, budget: u64) -> Vec<DeviceBudget> {
    (0..n)
        .map(|i| DeviceBudget {
            name: format!("cpu{i}"),
            device: Device::Cpu,
            budget_bytes: budget,
        })
        .collect()
}

fn spec(path: &Path, devices: Vec<DeviceBudget>, stages: &[(usize, usize, usize)]) -> LoadSpec {
    LoadSpec {
        path: path.to_path_buf(),
        format: Format::Gguf,
        task: Task::TextGeneration,
        sha256: None,
        devices,
        stages: stages
            .iter()
            .map(|&(device, first_layer, last_layer)| ExplicitStage {
                device,
                first_layer,
                last_layer,
            })
            .collect(),
        requantize: Requantize::default(),
    }
}

fn generator(spec: &LoadSpec) -> Arc<Generator> {
    match load(spec).expect("the tiny model loads") {
        Loaded::Generator(g) => g,
        Loaded::Embedder(_) => panic!("a GGUF model loaded as an embedder"),
    }
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        ..GenerateParams::default()
    }
}

fn complete(g: &Generator, prompt: &str, params: &GenerateParams) -> Vec<u32> {
    g.generate(prompt, params, &mut |_| true)
        .expect("generate")
        .tokens
}

const GIB: u64 = 1 << 30;

#[test]
fn several_cpu_stages_give_exactly_the_logits_and_tokens_of_one_stage() {
    for tied in [true, false] {
        let path = write(
            &format!("staging-{tied}"),
            &TinyLlama {
                tied,
                ..TinyLlama::default()
            },
        );
        let one = generator(&spec(&path, cpus(1, GIB), &[]));
        let three = generator(&spec(
            &path,
            cpus(3, GIB),
            &[(0, 0, 0), (1, 1, 2), (2, 3, 3)],
        ));
        let ranges: Vec<_> = three
            .stages()
            .iter()
            .map(|s| (s.first_layer, s.last_layer))
            .collect();
        assert_eq!(ranges, [(0, 0), (1, 2), (3, 3)]);

        let prompt = one
            .tokenizer()
            .encode("the quick brown fox 42")
            .expect("encode");
        let (mut c1, mut c3) = (one.model().new_cache(), three.model().new_cache());
        let l1 = one.model().forward(&prompt, 0, &mut c1).expect("forward");
        let l3 = three.model().forward(&prompt, 0, &mut c3).expect("forward");
        assert_eq!(l1, l3, "prompt logits differ (tied head: {tied})");
        let step1 = one
            .model()
            .forward(&[5], prompt.len(), &mut c1)
            .expect("step");
        let step3 = three
            .model()
            .forward(&[5], prompt.len(), &mut c3)
            .expect("step");
        assert_eq!(step1, step3, "decode logits differ (tied head: {tied})");

        let params = greedy(24);
        assert_eq!(
            complete(&one, "hello there", &params),
            complete(&three, "hello there", &params)
        );
    }
}

#[test]
fn loaded_stage_bytes_are_the_planned_ones() {
    for tied in [true, false] {
        let path = write(
            &format!("bytes-{tied}"),
            &TinyLlama {
                tied,
                ..TinyLlama::default()
            },
        );
        let mut devices = cpus(2, GIB);
        devices[1].budget_bytes = 3 * GIB;
        let spec = spec(&path, devices, &[]);
        let planned = plan_load(&spec).expect("plan");
        let loaded = Loaded::Generator(generator(&spec)).stages();
        assert_eq!(planned, loaded);
        assert_eq!(planned.len(), 2, "both devices get layers: {planned:?}");
        assert_eq!((planned[0].first_layer, planned[1].last_layer), (0, 3));
        assert_eq!(planned[0].last_layer + 1, planned[1].first_layer);
    }
}

#[test]
fn a_model_that_does_not_fit_is_refused_with_its_need_and_the_offers() {
    let path = write("too-big", &TinyLlama::default());
    let err = load(&spec(&path, cpus(2, 1000), &[])).expect_err("1000 bytes cannot hold it");
    let message = err.to_string();
    assert!(message.starts_with("model needs "), "{message}");
    assert!(
        message.ends_with("devices offer cpu0 1000B + cpu1 1000B"),
        "{message}"
    );
    assert_eq!(err.reason(), "InsufficientMemory");
}

#[test]
fn explicit_stages_that_skip_a_layer_are_refused_with_the_reason() {
    let path = write("bad-stages", &TinyLlama::default());
    let err = load(&spec(&path, cpus(2, GIB), &[(0, 0, 1), (1, 3, 3)])).expect_err("gap");
    assert_eq!(err.reason(), "InvalidStages");
    assert!(
        err.to_string()
            .contains("stage 1 starts at layer 3 where layer 2 was expected")
    );
}

#[test]
fn requantizing_q4_1_weights_keeps_the_logits() {
    let path = write("requant", &TinyLlama::default());
    let logits = |requantize| {
        let g = generator(&LoadSpec {
            requantize,
            ..spec(&path, cpus(1, GIB), &[])
        });
        let prompt = g.tokenizer().encode("in the hall").expect("encode");
        let bytes = g.stages()[0].bytes;
        (
            g.model()
                .forward(&prompt, 0, &mut g.model().new_cache())
                .expect("forward"),
            bytes,
        )
    };
    let (stored, stored_bytes) = logits(Requantize::Off);
    let (q8, q8_bytes) = logits(Requantize::To(GgmlDType::Q8_0));
    let (q4, _) = logits(Requantize::To(GgmlDType::Q4_0));
    let (c8, c4) = (common::cosine(&stored, &q8), common::cosine(&stored, &q4));
    eprintln!("cosine to the stored weights' logits: Q8_0 {c8}, Q4_0 {c4}");
    assert!(c8 > 0.995, "Q8_0: {c8}");
    assert!(
        c4 > 0.9 && c4 < c8,
        "Q4_0: {c4}, further from the stored weights than Q8_0"
    );
    assert!(
        q8_bytes > stored_bytes,
        "Q8_0 blocks are larger than Q4_1 blocks"
    );
}

#[test]
fn greedy_decoding_repeats_exactly() {
    let g = generator(&spec(
        &write("greedy", &TinyLlama::default()),
        cpus(1, GIB),
        &[],
    ));
    let first = g
        .generate("one two", &greedy(16), &mut |_| true)
        .expect("generate");
    let second = g
        .generate("one two", &greedy(16), &mut |_| true)
        .expect("generate");
    assert_eq!(first, second);
    assert_eq!(first.completion_tokens, 16);
    assert_eq!(first.finish_reason, FinishReason::Length);
    assert_eq!(
        first.prompt_tokens,
        g.tokenizer().encode("one two").expect("encode").len()
    );
}

#[test]
fn seeded_sampling_repeats_with_the_same_seed_and_varies_with_another() {
    let g = generator(&spec(
        &write("sampling", &TinyLlama::default()),
        cpus(1, GIB),
        &[],
    ));
    let params = |seed| GenerateParams {
        max_tokens: 24,
        temperature: 2.0,
        top_p: Some(0.95),
        top_k: None,
        seed,
    };
    let a = complete(&g, "on the", &params(1));
    assert_eq!(a, complete(&g, "on the", &params(1)));
    assert_ne!(a, complete(&g, "on the", &params(2)));
}

#[test]
fn concurrent_requests_share_the_weights_and_keep_their_own_caches() {
    let g = generator(&spec(
        &write("concurrent", &TinyLlama::default()),
        cpus(1, GIB),
        &[],
    ));
    let prompts = ["alpha", "the beta gamma", "in on ll", "42 is the answer"];
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| complete(&g, p, &greedy(12)))
        .collect();
    let together: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let g = Arc::clone(&g);
                s.spawn(move || complete(&g, p, &greedy(12)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(alone, together);
}

#[test]
fn the_stream_delivers_the_text_piece_by_piece_and_stops_when_asked() {
    let g = generator(&spec(
        &write("stream", &TinyLlama::default()),
        cpus(1, GIB),
        &[],
    ));
    let mut pieces = Vec::new();
    let out = g
        .generate("hello", &greedy(10), &mut |piece| {
            pieces.push(piece.to_string());
            true
        })
        .expect("generate");
    assert!(!pieces.is_empty());
    assert_eq!(pieces.concat(), out.text);
    assert_eq!(out.text, g.tokenizer().decode(&out.tokens).expect("decode"));

    let mut calls = 0;
    let stopped = g
        .generate("hello", &greedy(10), &mut |_| {
            calls += 1;
            false
        })
        .expect("generate");
    assert_eq!(calls, 1);
    assert_eq!(stopped.finish_reason, FinishReason::Cancelled);
    assert!(stopped.completion_tokens < 10);
}

#[test]
fn empty_overlong_and_out_of_vocabulary_prompts_are_invalid_requests() {
    let g = generator(&spec(
        &write("invalid", &TinyLlama::default()),
        cpus(1, GIB),
        &[],
    ));
    let empty = g.generate("", &greedy(4), &mut |_| true);
    assert!(matches!(empty, Err(Error::InvalidInput(_))), "{empty:?}");
    let long = "a ".repeat(200);
    let overlong = g.generate(&long, &greedy(4), &mut |_| true);
    assert!(
        matches!(overlong, Err(Error::InvalidInput(_))),
        "{overlong:?}"
    );
    let outside = g.generate_ids(&[5, 100_000], &greedy(4), &mut |_| true);
    assert!(
        matches!(outside, Err(Error::InvalidInput(_))),
        "{outside:?}"
    );
    let bad = GenerateParams {
        temperature: -1.0,
        ..GenerateParams::default()
    };
    assert!(matches!(
        g.generate("a", &bad, &mut |_| true),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn the_gguf_tokenizer_merges_byte_pairs_splits_digits_and_round_trips() {
    let g = generator(&spec(
        &write("tokenizer", &TinyLlama::default()),
        cpus(1, GIB),
        &[],
    ));
    let t = g.tokenizer();
    let tokens = common::tiny::tokens();
    let id = |s: &str| tokens.iter().position(|t| t == s).expect("token") as u32;
    assert_eq!(
        t.encode("the the 12").expect("encode"),
        [id("t"), id("he"), id("Ġthe"), id("Ġ"), id("1"), id("2")]
    );
    for text in [
        "the quick brown fox",
        "ünïcödé 🚀 text",
        "  spaces\nand\ttabs",
    ] {
        assert_eq!(
            t.decode(&t.encode(text).expect("encode")).expect("decode"),
            text
        );
    }
    assert!(
        t.is_stop(2) && t.is_stop(0),
        "EOS and <|endoftext|> end a generation"
    );
}

#[test]
fn a_missing_file_is_reported_by_its_path() {
    let path = common::temp_dir("missing").join("nothing.gguf");
    let err = load(&spec(&path, cpus(1, GIB), &[])).expect_err("missing");
    assert_eq!(err.reason(), "ModelNotFound");
    assert_eq!(
        err.to_string(),
        format!("model file {} does not exist", path.display())
    );
}

#[test]
fn a_checksum_mismatch_names_both_digests_and_the_right_one_loads() {
    let path = write("checksum", &TinyLlama::default());
    let actual = gogrid_pipeline::source::sha256_file(&path).expect("hash");
    let wrong = "0".repeat(64);
    let err = load(&LoadSpec {
        sha256: Some(wrong.clone()),
        ..spec(&path, cpus(1, GIB), &[])
    })
    .expect_err("mismatch");
    assert!(matches!(err, LoadError::ChecksumMismatch { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "checksum mismatch for {}: expected sha256 {wrong}, the file has {actual}",
            path.display()
        )
    );
    load(&LoadSpec {
        sha256: Some(actual),
        ..spec(&path, cpus(1, GIB), &[])
    })
    .expect("the right checksum loads");
}

#[test]
fn an_architecture_other_than_llama_is_refused_naming_the_field() {
    let path = write(
        "falcon",
        &TinyLlama {
            arch: "falcon",
            ..TinyLlama::default()
        },
    );
    let err = load(&spec(&path, cpus(1, GIB), &[])).expect_err("falcon");
    assert_eq!(err.reason(), "UnsupportedModel");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: general.architecture is \"falcon\", which is not supported (supported: llama)",
            path.display()
        )
    );
}

#[test]
fn a_gguf_file_is_refused_for_embeddings_and_as_safetensors() {
    let path = write("wrong-format", &TinyLlama::default());
    let embedding = LoadSpec {
        task: Task::Embedding,
        ..spec(&path, cpus(1, GIB), &[])
    };
    let err = load(&embedding).expect_err("gguf embeddings");
    assert!(matches!(err, LoadError::UnsupportedTask { .. }), "{err}");
    let as_safetensors = LoadSpec {
        format: Format::Safetensors,
        ..embedding
    };
    let err = load(&as_safetensors).expect_err("not safetensors");
    assert!(matches!(err, LoadError::InvalidFormat { .. }), "{err}");
    assert!(
        err.to_string().contains("is not a valid safetensors file"),
        "{err}"
    );
}
