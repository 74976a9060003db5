//! Who may read `/metrics`: the caller's bearer token is reviewed by the API
//! server (TokenReview) and the user it names must be allowed `get` on the
//! non-resource URL `/metrics` (SubjectAccessReview), as kube-rbac-proxy and
//! controller-runtime's secure metrics do. No token or a token the API server
//! does not know is 401, a known user without the permission 403. Verdicts are
//! kept for a minute, keyed by the token's SHA-256, so a scrape every few
//! seconds costs the API server two requests a minute per scraper.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;
use sha2::{Digest, Sha256};

/// How long a verdict is kept.
const TTL: Duration = Duration::from_secs(60);
/// Most verdicts kept; past it the cache starts over (a flood of made-up
/// tokens cannot grow memory).
const MAX_CACHED: usize = 1024;
/// The path and verb a reader must be allowed.
pub const PATH: &str = "/metrics";

/// What the API server said of a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated and allowed `get` on `/metrics`.
    Allowed,
    /// No bearer token, or one the API server does not accept (401).
    Unauthenticated(String),
    /// Authenticated, but not allowed (403).
    Forbidden(String),
    /// The API server could not be asked (503; not cached).
    Unavailable(String),
}

/// The `--metrics-auth` flag both binaries take.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct MetricsAuthArgs {
    /// Answer `/metrics` only to callers whose bearer token the API server
    /// accepts and who may `get /metrics` (TokenReview + SubjectAccessReview).
    #[arg(
        long = "metrics-auth",
        env = "GOGRID_METRICS_AUTH",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub enabled: bool,
}

impl MetricsAuthArgs {
    /// The checker for `client`, when enabled.
    pub fn build(self, client: &kube::Client) -> Option<MetricsAuth> {
        self.enabled.then(|| MetricsAuth::new(client.clone()))
    }
}

/// Authentication and authorization of metrics readers through the API server.
#[derive(Clone)]
pub struct MetricsAuth {
    client: kube::Client,
    cache: Arc<Mutex<Verdicts>>,
}

/// Verdicts by the SHA-256 of the token, with when they were given.
type Verdicts = HashMap<[u8; 32], (Instant, Verdict)>;

impl std::fmt::Debug for MetricsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsAuth").finish_non_exhaustive()
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

impl MetricsAuth {
    /// Reviews callers with `client` (its identity needs `create` on
    /// tokenreviews and subjectaccessreviews: the `system:auth-delegator` role).
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Arc::default(),
        }
    }

    /// The verdict for a request carrying `authorization` (the header's value).
    pub async fn check(&self, authorization: Option<&str>) -> Verdict {
        let Some(token) = bearer(authorization) else {
            return Verdict::Unauthenticated(
                "a bearer token is required (Authorization: Bearer <token>)".to_owned(),
            );
        };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Ok(cache) = self.cache.lock()
            && let Some((at, verdict)) = cache.get(&key)
            && at.elapsed() < TTL
        {
            return verdict.clone();
        }
        let verdict = self.review(token).await;
        if !matches!(verdict, Verdict::Unavailable(_))
            && let Ok(mut cache) = self.cache.lock()
        {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), verdict.clone()));
        }
        verdict
    }

    async fn review(&self, token: &str) -> Verdict {
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let reviewed = match reviews.create(&PostParams::default(), &review).await {
            Ok(r) => r,
            Err(e) => return Verdict::Unavailable(format!("TokenReview failed: {e}")),
        };
        let status = reviewed.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .unwrap_or_else(|| "token not accepted".to_owned());
            return Verdict::Unauthenticated(format!(
                "the API server does not accept the token: {why}"
            ));
        }
        let name = user.username.clone().unwrap_or_default();
        let access: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(PATH.to_owned()),
                    verb: Some("get".to_owned()),
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        match access.create(&PostParams::default(), &sar).await {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => Verdict::Allowed,
            Ok(_) => Verdict::Forbidden(format!(
                "user {name:?} may not get {PATH} (bind it to the metrics-reader ClusterRole)"
            )),
            Err(e) => Verdict::Unavailable(format!("SubjectAccessReview failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_header_with_a_token_carries_one() {
        assert_eq!(bearer(Some("Bearer abc.def")), Some("abc.def"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic dXNlcjpwYXNz")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("Bearer")), None);
        assert_eq!(bearer(None), None);
    }
}
