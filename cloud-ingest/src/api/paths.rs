//! A router that remembers the paths it routes, so a test can hold the API and its OpenAPI
//! document to each other.

use std::sync::Arc;

use axum::Router;
use axum::routing::MethodRouter;

use crate::state::AppState;

/// Routes and their paths, in the order they were added.
#[derive(Debug, Default)]
pub struct Paths {
    router: Router<Arc<AppState>>,
    paths: Vec<&'static str>,
}

impl Paths {
    /// Adds a route.
    pub fn route(mut self, path: &'static str, method: MethodRouter<Arc<AppState>>) -> Self {
        self.router = self.router.route(path, method);
        self.paths.push(path);
        self
    }

    /// Adds another resource's routes.
    pub fn merge(mut self, other: Paths) -> Self {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }

    /// The paths routed.
    pub fn paths(&self) -> &[&'static str] {
        &self.paths
    }

    /// The router, for the state to be added.
    pub fn into_router(self) -> Router<Arc<AppState>> {
        self.router
    }
}
