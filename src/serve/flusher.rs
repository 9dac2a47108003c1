//! Writes the pieces of streamed bodies that an app produced and then
//! paused on. Pieces after the first are gathered (see
//! `Exchange::send_piece`); this thread (no Ruby, no GVL) writes any that
//! have waited a few milliseconds. It sleeps on a channel while no stream
//! has pieces waiting.

use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

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

/// Ends when every `Flusher` handle is dropped. While it watches
/// something it sleeps between looks instead of waiting on the channel:
/// an exchange handed to it meanwhile then costs no wake-up (under a
/// stream of streamed responses, one wake per look instead of one context
/// switch per response).
fn run(rx: Receiver<Weak<Exchange>>) {
    let mut watched: Vec<Weak<Exchange>> = Vec::new();
    loop {
        if watched.is_empty() {
            match rx.recv() {
                Ok(exchange) => watched.push(exchange),
                Err(_) => return,
            }
        }
        std::thread::sleep(MAX_DELAY / 2);
        loop {
            match rx.try_recv() {
                Ok(exchange) => watched.push(exchange),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
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

    #[test]
    fn a_head_whose_body_pauses_goes_out_alone() {
        let (flusher, thread) = Flusher::start(Arc::new(Faults::default())).unwrap();
        let (job, mut client, _mailbox) = job("/slow-each", Arc::new(Shared::default()));
        let ex = Arc::new(Exchange::new(
            job,
            Arc::new(Waker::new().unwrap()),
            DEADLINE,
        ));
        let head = b"HTTP/1.1 200 OK\r\n\r\n";
        ex.set_head(200, head.len(), Framing::UntilClose);
        assert!(ex.queue_head(&Direct, head).unwrap());
        flusher.watch(&ex);
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut got = vec![0; head.len()];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, head);
        drop(flusher);
        thread.join().unwrap();
    }
}
