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
use crate::process::supervise::{self, Faults};

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::http::response::Framing;
    use crate::net::handoff::testing::{job, DEADLINE};
    use crate::net::Shared;
    use crate::serve::{Direct, Waker};
    use std::io::Read;

    #[test]
    fn gathered_pieces_reach_the_client_without_another_write() {
        let (flusher, thread) = Flusher::start(Arc::new(Faults::default())).unwrap();
        let (job, mut client, _mailbox) = job("/sse", Arc::new(Shared::default()));
        let ex = Arc::new(Exchange::new(
            job,
            Arc::new(Waker::new().unwrap()),
            DEADLINE,
        ));
        ex.set_head(200, 0, Framing::UntilClose);
        ex.send_piece(&Direct, &[b"data: 1\n\n"], true).unwrap();
        assert!(ex.send_piece(&Direct, &[b"data: 2\n\n"], true).unwrap());
        flusher.watch(&ex);
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut got = vec![0; 18];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, b"data: 1\n\ndata: 2\n\n");
        drop(flusher);
        thread.join().unwrap();
    }
}
