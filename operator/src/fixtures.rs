//! Test twin of the API server for one reconcile step: a tower-test mock that
//! keeps objects by path, answers GET, LIST, server-side-apply PATCH and
//! DELETE, and counts the writes it receives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

/// Objects by path (no query), and every request seen as "METHOD path".
#[derive(Clone, Default, Debug)]
pub struct FakeApi {
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeApi {
    /// A client whose requests this fake answers, until the client is dropped.
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let this = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let response = this.answer(request).await;
                send.send_response(response);
            }
        });
        kube::Client::new(service, "default")
    }

    /// Put an object at `path`.
    pub fn put(&self, path: &str, object: Value) {
        self.objects
            .lock()
            .expect("lock")
            .insert(path.to_owned(), object);
    }

    /// The object at `path`.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().expect("lock").get(path).cloned()
    }

    /// The write requests seen so far ("PATCH /api/...").
    pub fn writes(&self) -> Vec<String> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| !r.starts_with("GET "))
            .cloned()
            .collect()
    }

    /// Every request seen so far ("GET /api/...", "PATCH /api/...").
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }

    /// Forget the requests seen so far.
    pub fn clear_requests(&self) {
        self.requests.lock().expect("lock").clear();
    }

    async fn answer(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        self.requests
            .lock()
            .expect("lock")
            .push(format!("{method} {path}"));
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let mut objects = self.objects.lock().expect("lock");
        let (status, value) = match method {
            Method::GET => match objects.get(&path) {
                Some(v) => (StatusCode::OK, v.clone()),
                None if is_collection(&path) => {
                    let items: Vec<Value> = objects
                        .iter()
                        .filter(|(k, _)| {
                            k.starts_with(&format!("{path}/")) && !k[path.len() + 1..].contains('/')
                        })
                        .map(|(_, v)| v.clone())
                        .collect();
                    (
                        StatusCode::OK,
                        json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}),
                    )
                }
                None => not_found(&path),
            },
            Method::PATCH => {
                let patch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if let Some(main) = path.strip_suffix("/status") {
                    let mut obj = objects.get(main).cloned().unwrap_or_else(|| json!({}));
                    obj["status"] = patch["status"].clone();
                    objects.insert(main.to_owned(), obj.clone());
                    (StatusCode::OK, obj)
                } else {
                    objects.insert(path.clone(), patch.clone());
                    (StatusCode::OK, patch)
                }
            }
            Method::DELETE => match objects.remove(&path) {
                Some(v) => (StatusCode::OK, v),
                None => not_found(&path),
            },
            _ => (StatusCode::METHOD_NOT_ALLOWED, json!({})),
        };
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&value).unwrap_or_default()))
            .unwrap_or_else(|_| Response::new(Body::empty()))
    }
}

fn is_collection(path: &str) -> bool {
    // /api/v1/namespaces/x/services or /apis/g/v/namespaces/x/endpointslices
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let core = parts.first() == Some(&"api");
    let len = parts.len();
    if core {
        len == 3 || len == 5
    } else {
        len == 4 || len == 6
    }
}

fn not_found(path: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{path} not found"), "reason": "NotFound", "code": 404}),
    )
}
