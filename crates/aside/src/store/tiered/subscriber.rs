//! The task holding the L1's subscription to the invalidation channel, and proving the bound.
//!
//! It subscribes, voids the L1 (messages published before the subscription took effect were
//! missed), and then applies every message as it arrives. Every quarter of the bound it sends
//! a `PING` on the subscription: Redis answers it after every message published before it, so
//! once the reply is in and the messages before it applied, every invalidation acknowledged
//! before the ping was sent has been applied, and the L1 may serve until then plus the bound.
//! A reply that does not come within its patience ends the session: the L1 stops serving (and
//! is voided) until a new subscription is made, with a jittered backoff.

use super::Shared;
use futures::{FutureExt, StreamExt};
use redis::{Client, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The task holding the subscription.
pub(super) struct Subscriber {
    pub(super) shared: Arc<Shared>,
    pub(super) client: Client,
    pub(super) channel: String,
    pub(super) patience: Duration,
    pub(super) beat: Duration,
}

impl Subscriber {
    pub(super) async fn run(self) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let subscribed = &mut false;
            let why = self.session(subscribed).await;
            self.shared.lost();
            if *subscribed {
                warn!(channel = %self.channel, error = %why, "L1 invalidation channel lost; the L1 is bypassed until it is back");
                backoff = Duration::from_millis(50);
            } else {
                debug!(channel = %self.channel, error = %why, "L1 invalidation channel not established");
            }
            tokio::time::sleep(backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0)).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One subscription, until it fails.
    async fn session(&self, subscribed: &mut bool) -> String {
        let patience = self.patience;
        let pubsub = match tokio::time::timeout(patience, self.client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return "connect timed out".into(),
        };
        let (mut sink, mut stream) = pubsub.split();
        let sent = Instant::now();
        match tokio::time::timeout(patience, sink.subscribe(&self.channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return "subscribe timed out".into(),
        }
        // Messages published before the subscription took effect were missed.
        self.shared.resync();
        self.shared.confirm(sent);
        *subscribed = true;
        info!(channel = %self.channel, "L1 invalidation channel subscribed");
        let mut beat = tokio::time::interval(self.beat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.tick().await;
        loop {
            tokio::select! {
                m = stream.next() => match m {
                    Some(m) => self.shared.receive(m.get_payload_bytes()),
                    None => return "connection closed".into(),
                },
                _ = beat.tick() => {
                    let sent = Instant::now();
                    match tokio::time::timeout(patience, sink.ping::<Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return e.to_string(),
                        Err(_) => return "no answer to PING".into(),
                    }
                    // Every message Redis sent before the reply is in the stream already.
                    while let Some(m) = stream.next().now_or_never() {
                        match m {
                            Some(m) => self.shared.receive(m.get_payload_bytes()),
                            None => return "connection closed".into(),
                        }
                    }
                    self.shared.confirm(sent);
                }
            }
        }
    }
}
