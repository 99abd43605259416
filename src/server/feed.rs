//! Wakes change-feed long-polls when a project's cursor moves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Feed {
    projects: Mutex<HashMap<i64, Arc<Notify>>>,
}

impl Feed {
    pub fn handle(&self, project_id: i64) -> Arc<Notify> {
        let mut map = self.projects.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(project_id).or_default().clone()
    }

    pub fn notify(&self, project_id: i64) {
        self.handle(project_id).notify_waiters();
    }

    /// Wakes the waiters of every project (changes may have been missed).
    pub fn notify_all(&self) {
        let map = self.projects.lock().unwrap_or_else(|p| p.into_inner());
        for notify in map.values() {
            notify.notify_waiters();
        }
    }
}
