//! Writes the pieces of streamed bodies that an app produced and then
//! paused on. Pieces after the first are gathered (see
//! `Exchange::send_piece`); this thread (no Ruby, no GVL) writes any that
//! have waited a few milliseconds. It sleeps on a channel while no stream
//! has pieces waiting.

use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::exchange::Exchange;
use crate::net::supervise::{self, Faults};

/// How old gathered pieces may get before this thread writes them.
pub const MAX_DELAY: Duration = Duration::from_millis(5);

#[derive(Clone)]
pub struct Flusher {
    tx: Sender<Weak<Exchange>>,
}

impl Flusher {
    pub fn start(faults: Arc<Faults>) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let handle = supervise::spawn("butterflies-flusher".into(), faults, move || {
            run(rx);
            Ok(())
        })?;
        Ok((Flusher { tx }, handle))
    }

    /// Watches an exchange that has pieces waiting.
    pub fn watch(&self, exchange: &Arc<Exchange>) {
        let _ = self.tx.send(Arc::downgrade(exchange));
    }
}

/// Ends when every `Flusher` handle is dropped.
fn run(rx: Receiver<Weak<Exchange>>) {
    let mut watched: Vec<Weak<Exchange>> = Vec::new();
    loop {
        let next = if watched.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(MAX_DELAY / 2)
        };
        match next {
            Ok(exchange) => watched.push(exchange),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(exchange) = rx.try_recv() {
            watched.push(exchange);
        }
        watched.retain(|weak| {
            weak.upgrade()
                .is_some_and(|ex| ex.flush_if_older(MAX_DELAY))
        });
    }
}
