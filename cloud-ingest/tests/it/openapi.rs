//! The OpenAPI document and the router agree (#14, item 5): every documented path is
//! routed and every routed path documented, and on each path exactly the documented methods
//! are answered by a handler; the others get 405 from the router. Outside the document, on
//! purpose: nothing (console assets, health and metrics are on other servers). Parameter
//! names differ (`{u}` in the router, `{user}` in the document): paths are compared with
//! every parameter as `{}`.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::Value as Json;

use crate::support::*;

/// Routed paths the document leaves out on purpose (none today).
const UNDOCUMENTED: &[&str] = &[];

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn normalize(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let doc: Json = serde_json::from_str(include_str!("../../src/openapi.json")).unwrap();
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, ops)| {
            let methods = METHODS
                .iter()
                .filter(|m| ops.get(**m).is_some())
                .map(|m| m.to_string())
                .collect();
            (normalize(p), methods)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_is_documented_and_every_documented_route_routed() {
    let doc = documented();
    let routed: BTreeSet<String> = twinlake_cloud::api::paths()
        .into_iter()
        .filter(|p| !UNDOCUMENTED.contains(p))
        .map(normalize)
        .collect();
    let in_doc: BTreeSet<String> = doc.keys().cloned().collect();
    assert_eq!(
        routed.difference(&in_doc).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "routed, not documented"
    );
    assert_eq!(
        in_doc.difference(&routed).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "documented, not routed"
    );

    // Each method on each path: a handler answers (anything but 405) exactly when documented.
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    let api = cloud.api();
    for (path, methods) in &doc {
        let concrete = path.replace("{}", "probe");
        for m in METHODS {
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let resp = tokio::time::timeout(
                std::time::Duration::from_secs(20),
                api.client
                    .request(method, format!("{}{concrete}", api.base))
                    .bearer_auth(ADMIN)
                    .send(),
            )
            .await
            .unwrap_or_else(|_| panic!("{m} {concrete} did not answer"))
            .unwrap();
            let handled = resp.status().as_u16() != 405;
            assert_eq!(handled, methods.contains(m), "{m} {path}: {}", resp.status());
        }
    }
    cloud.stop().await;
}
