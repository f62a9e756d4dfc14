//! The event bus: every change worth watching (a job's step, progress and end; an image, an
//! application or a model VM created, replaced or deleted) is appended to the store's event log and
//! then broadcast to live subscribers. Subscribers that fall behind, or connect late, catch up from
//! the log by sequence number, so a stream never skips an event.

use slipway_core::resources::Event;
use slipway_store::{NewEvent, Store, StoreError};
use tokio::sync::broadcast;

#[derive(Clone)]
pub struct EventBus {
    store: Store,
    live: broadcast::Sender<Event>,
}

impl EventBus {
    pub fn new(store: Store) -> Self {
        let (live, _) = broadcast::channel(1024);
        Self { store, live }
    }

    pub async fn publish(&self, event: NewEvent<'_>) -> Result<Event, StoreError> {
        let event = self.store.append_event(event).await?;
        // No subscriber is not an error: the log keeps the event for later readers.
        let _ = self.live.send(event.clone());
        Ok(event)
    }

    /// Publishes, logging rather than failing when the log cannot be written: an event is a
    /// notification about a change that has already happened.
    pub async fn notify(&self, topic: &str, subject: &str, kind: &str, data: serde_json::Value) {
        let event = NewEvent {
            topic,
            subject,
            kind,
            data,
        };
        if let Err(error) = self.publish(event).await {
            tracing::warn!(topic, subject, kind, error = %error, "event not recorded");
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}
