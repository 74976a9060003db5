//! Unit tests of the registry.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::*;
use crate::admission::AdmitAll;
use crate::fixtures::Recorder;

fn registry() -> Registry {
    let policy = BatchPolicy {
        max_queue_delay: Duration::ZERO,
        ..BatchPolicy::default()
    };
    let (_tx, rx) = watch::channel(policy);
    Registry::new(rx, Arc::new(AdmitAll), Metrics::unregistered())
}

fn with_versions(versions: &[&str]) -> Registry {
    let registry = registry();
    for version in versions {
        assert!(
            registry
                .add("m", version, Arc::new(Recorder::new(8)))
                .is_ok()
        );
        assert!(registry.set_ready("m", version, true).is_ok());
    }
    registry
}

fn resolved(registry: &Registry, version: Option<&str>) -> Result<String> {
    registry
        .resolve("m", version)
        .map(|v| v.version().to_owned())
}

#[test]
fn an_unversioned_request_goes_to_the_single_ready_version() {
    let registry = with_versions(&["1"]);
    assert!(registry.add("m", "2", Arc::new(Recorder::new(8))).is_ok());
    assert_eq!(resolved(&registry, None), Ok("1".to_owned()));
    assert!(registry.set_ready("m", "2", true).is_ok());
    assert_eq!(resolved(&registry, None), Ok("2".to_owned()));
}

#[test]
fn a_model_without_a_ready_version_is_unavailable_and_an_unknown_one_not_found() {
    let registry = registry();
    assert!(registry.add("m", "1", Arc::new(Recorder::new(8))).is_ok());
    assert!(matches!(
        resolved(&registry, None),
        Err(ServeError::Unavailable(_))
    ));
    assert!(matches!(
        resolved(&registry, Some("1")),
        Err(ServeError::Unavailable(_))
    ));
    assert!(matches!(
        resolved(&registry, Some("9")),
        Err(ServeError::NotFound(_))
    ));
    assert!(matches!(
        registry.resolve("other", None),
        Err(ServeError::NotFound(_))
    ));
    assert!(!registry.all_ready());
}

#[test]
fn a_versioned_request_goes_to_that_version_whatever_the_selector_says() {
    let registry = with_versions(&["1", "2"]);
    assert_eq!(resolved(&registry, Some("1")), Ok("1".to_owned()));
    assert_eq!(resolved(&registry, None), Ok("2".to_owned()));
}

#[test]
fn a_swapped_selector_applies_from_the_next_request() {
    let registry = with_versions(&["blue", "green"]);
    assert_eq!(resolved(&registry, None), Ok("green".to_owned()));
    let first: Arc<dyn VersionSelector> = Arc::new(|_: &str, _: &[&str]| Some(0));
    assert!(registry.set_selector("m", Some(first)).is_ok());
    assert_eq!(resolved(&registry, None), Ok("blue".to_owned()));
    let refuse: Arc<dyn VersionSelector> = Arc::new(|_: &str, _: &[&str]| None);
    assert!(registry.set_selector("m", Some(refuse)).is_ok());
    assert!(matches!(
        resolved(&registry, None),
        Err(ServeError::Unavailable(_))
    ));
    assert!(registry.set_selector("m", None).is_ok());
    assert_eq!(resolved(&registry, None), Ok("green".to_owned()));
}

#[test]
fn adding_a_version_twice_is_refused() {
    let registry = with_versions(&["1"]);
    assert!(registry.add("m", "1", Arc::new(Recorder::new(8))).is_err());
}

#[tokio::test]
async fn a_removed_version_still_answers_the_request_that_holds_it() {
    let registry = with_versions(&["1"]);
    let held = registry.resolve("m", None).expect("ready");
    assert!(registry.remove("m", "1"));
    assert!(matches!(
        registry.resolve("m", None),
        Err(ServeError::NotFound(_))
    ));
    let (reply, answer) = oneshot::channel();
    assert!(
        held.submit(Work::Embed {
            texts: vec!["5".into()],
            reply
        })
        .is_ok()
    );
    assert_eq!(answer.await.expect("answered"), Ok(vec![vec![5.0]]));
    assert!(!registry.remove("m", "1"));
}
