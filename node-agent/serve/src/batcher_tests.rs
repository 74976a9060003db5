//! Unit tests of the batcher.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc as tokio_mpsc, oneshot};

use super::*;
use crate::admission::Permit;
use crate::fixtures::{Counter, Recorder, context, open_context};

fn policy(max_batch_size: usize) -> BatchPolicy {
    BatchPolicy {
        max_batch_size,
        max_queue_delay: Duration::ZERO,
        max_queue_depth: 64,
        max_queue_wait: MAX_QUEUE_WAIT,
    }
}

fn embed(queue: &Queue, text: &str) -> oneshot::Receiver<Result<Vec<Vec<f32>>>> {
    let (reply, answer) = oneshot::channel();
    let submitted = queue.submit(Work::Embed {
        texts: vec![text.to_owned()],
        reply,
    });
    assert!(submitted.is_ok(), "{submitted:?}");
    answer
}

#[tokio::test]
async fn queued_requests_form_batches_no_bigger_than_the_max_and_answers_reach_their_callers() {
    let (backend, started, release) = Recorder::gated(32);
    let (ctx, _policy) = open_context(policy(4));
    let queue = Queue::start("m", "1", backend.clone(), &ctx).expect("worker starts");
    let first = embed(&queue, "0");
    started.recv().expect("first batch starts");
    let rest: Vec<_> = (1..13).map(|i| embed(&queue, &i.to_string())).collect();
    release.send(()).expect("worker waits");
    assert_eq!(first.await.expect("answered"), Ok(vec![vec![0.0]]));
    for (i, answer) in (1..13).zip(rest) {
        assert_eq!(answer.await.expect("answered"), Ok(vec![vec![i as f32]]));
    }
    assert_eq!(backend.batches(), vec![1, 4, 4, 4]);
}

#[tokio::test]
async fn a_policy_change_applies_from_the_next_batch() {
    let (backend, started, release) = Recorder::gated(32);
    let (ctx, policy_tx) = open_context(policy(4));
    let queue = Queue::start("m", "1", backend.clone(), &ctx).expect("worker starts");
    let first = embed(&queue, "0");
    started.recv().expect("first batch starts");
    let rest: Vec<_> = (1..7).map(|i| embed(&queue, &i.to_string())).collect();
    policy_tx.send_replace(policy(2));
    release.send(()).expect("worker waits");
    assert!(first.await.is_ok());
    for answer in rest {
        assert!(matches!(answer.await, Ok(Ok(_))));
    }
    assert_eq!(backend.batches(), vec![1, 2, 2, 2]);
}

#[tokio::test]
async fn the_model_max_batch_size_caps_the_policy() {
    let (backend, started, release) = Recorder::gated(2);
    let (ctx, _policy) = open_context(policy(16));
    let queue = Queue::start("m", "1", backend.clone(), &ctx).expect("worker starts");
    let first = embed(&queue, "0");
    started.recv().expect("first batch starts");
    let rest: Vec<_> = (1..5).map(|i| embed(&queue, &i.to_string())).collect();
    release.send(()).expect("worker waits");
    assert!(first.await.is_ok());
    for answer in rest {
        assert!(matches!(answer.await, Ok(Ok(_))));
    }
    assert_eq!(backend.batches(), vec![1, 2, 2]);
}

#[tokio::test]
async fn a_full_queue_is_told_to_retry_later() {
    let (backend, started, release) = Recorder::gated(32);
    let (ctx, _policy) = open_context(BatchPolicy {
        max_queue_depth: 2,
        ..policy(4)
    });
    let queue = Queue::start("m", "1", backend, &ctx).expect("worker starts");
    let first = embed(&queue, "0");
    started.recv().expect("first batch starts");
    let queued = [embed(&queue, "1"), embed(&queue, "2")];
    let (reply, _answer) = oneshot::channel();
    let refused = queue.submit(Work::Embed {
        texts: vec!["3".into()],
        reply,
    });
    assert!(
        matches!(&refused, Err(ServeError::Throttled { message, retry_after }) if message.contains("full") && *retry_after == Duration::from_secs(1)),
        "{refused:?}"
    );
    release.send(()).expect("worker waits");
    assert!(first.await.is_ok());
    for answer in queued {
        assert!(matches!(answer.await, Ok(Ok(_))));
    }
}

#[tokio::test]
async fn more_texts_than_the_model_batches_are_refused_as_invalid() {
    let (ctx, _policy) = open_context(policy(4));
    let queue = Queue::start("m", "1", Arc::new(Recorder::new(2)), &ctx).expect("worker starts");
    let (reply, _answer) = oneshot::channel();
    let refused = queue.submit(Work::Embed {
        texts: vec!["1".into(); 3],
        reply,
    });
    assert!(
        matches!(refused, Err(ServeError::InvalidArgument(m)) if m.contains("max batch size 2"))
    );
}

struct Throttle;

impl Admission for Throttle {
    fn admit(&self, _: &str, _: &str, _: usize) -> std::result::Result<Permit, Rejection> {
        Err(Rejection::Throttled {
            retry_after: Duration::from_secs(2),
        })
    }
}

#[tokio::test]
async fn a_throttled_batch_answers_every_caller_with_the_retry_delay() {
    let (ctx, _policy) = context(policy(4), Arc::new(Throttle));
    let queue = Queue::start("m", "1", Arc::new(Recorder::new(8)), &ctx).expect("worker starts");
    let answer = embed(&queue, "1").await.expect("answered");
    assert!(
        matches!(answer, Err(ServeError::Throttled { retry_after, .. }) if retry_after == Duration::from_secs(2))
    );
}

#[tokio::test]
async fn a_panicking_backend_answers_internal_and_the_worker_keeps_serving() {
    let (ctx, _policy) = open_context(policy(1));
    let queue = Queue::start("m", "1", Arc::new(Recorder::new(8)), &ctx).expect("worker starts");
    let failed = embed(&queue, "panic").await.expect("answered");
    assert!(matches!(failed, Err(ServeError::Internal(m)) if m.contains("asked to panic")));
    assert_eq!(
        embed(&queue, "7").await.expect("answered"),
        Ok(vec![vec![7.0]])
    );
}

#[tokio::test]
async fn generated_tokens_arrive_in_order_and_end_with_the_summary() {
    let (ctx, _policy) = open_context(policy(4));
    let queue = Queue::start("m", "1", Arc::new(Counter), &ctx).expect("worker starts");
    let (tokens, mut token_rx) = tokio_mpsc::unbounded_channel();
    let (reply, answer) = oneshot::channel();
    let params = GenerateParams {
        max_tokens: 200,
        ..GenerateParams::default()
    };
    let submitted = queue.submit(Work::Generate {
        prompt: "hi".into(),
        params,
        tokens,
        reply,
    });
    assert!(submitted.is_ok());
    let mut pieces = Vec::new();
    while let Some(piece) = token_rx.recv().await {
        pieces.push(piece);
    }
    let expected: Vec<String> = (0..200).map(|i| format!("{i} ")).collect();
    assert_eq!(pieces, expected);
    let summary = answer.await.expect("answered").expect("generated");
    assert_eq!(summary.completion_tokens, 200);
}

#[tokio::test]
async fn a_request_that_waited_longer_than_the_bound_is_told_to_retry_not_run() {
    let (backend, started, release) = Recorder::gated(32);
    let mut p = policy(4);
    p.max_queue_wait = Duration::from_millis(50);
    let (ctx, _policy) = open_context(p);
    let queue = Queue::start("m", "1", backend.clone(), &ctx).expect("worker starts");
    let first = embed(&queue, "0");
    started.recv().expect("first batch starts");
    // Queued while the first batch holds the worker, longer than the bound.
    let late = embed(&queue, "1");
    std::thread::sleep(Duration::from_millis(120));
    release.send(()).expect("worker waits");
    assert_eq!(first.await.expect("answered"), Ok(vec![vec![0.0]]));
    match late.await.expect("answered") {
        Err(ServeError::Throttled {
            retry_after,
            message,
        }) => {
            assert_eq!(retry_after, Duration::from_secs(1));
            assert!(message.contains("waited"), "{message}");
        }
        other => panic!("expected 429, got {other:?}"),
    }
    assert_eq!(backend.batches(), vec![1], "the late request never ran");
}
