//! The one place errors and notable changes reach people as Kubernetes Events:
//! reason = the category (PascalCase), note = the whole source chain, cut to 1 KiB.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::Error;

/// Publishes Events on behalf of the operator.
#[derive(Clone)]
pub struct EventReporter {
    recorder: Option<Recorder>,
}

impl std::fmt::Debug for EventReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReporter")
            .field("enabled", &self.recorder.is_some())
            .finish()
    }
}

impl EventReporter {
    /// A reporter writing through `client`.
    pub fn new(client: kube::Client) -> Self {
        let reporter = Reporter {
            controller: gogrid_crds::labels::OPERATOR_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Some(Recorder::new(client, reporter)),
        }
    }

    /// A reporter that drops everything (unit tests that count writes).
    pub fn disabled() -> Self {
        Self { recorder: None }
    }

    /// A Warning Event for a failed reconcile.
    pub async fn error(&self, regarding: &ObjectReference, action: &str, error: &Error) {
        self.publish(
            regarding,
            EventType::Warning,
            error.reason(),
            action,
            &error.chain(),
        )
        .await;
    }

    /// A Warning Event with its own reason.
    pub async fn warning(
        &self,
        regarding: &ObjectReference,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        self.publish(regarding, EventType::Warning, reason, action, note)
            .await;
    }

    /// A Normal Event.
    pub async fn normal(
        &self,
        regarding: &ObjectReference,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        self.publish(regarding, EventType::Normal, reason, action, note)
            .await;
    }

    async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(gogrid_crds::conditions::truncate(note, 1024)),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, regarding).await {
            tracing::warn!(error = %e, reason, "could not publish Event");
        }
    }
}
