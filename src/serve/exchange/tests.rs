//! The exchange on real loopback connections.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::net::handoff::testing::{job, DEADLINE};
use crate::net::Shared;
use crate::serve::Direct;
use std::io::Read;
use std::net::TcpStream;

fn exchange(
    path: &str,
    write_timeout: Duration,
) -> (Exchange, TcpStream, Arc<crate::net::handoff::Mailbox>) {
    let (job, client, mailbox) = job(path, Arc::new(Shared::default()));
    let waker = Arc::new(Waker::new().unwrap());
    (Exchange::new(job, waker, write_timeout), client, mailbox)
}

/// Reads exactly `len` bytes from the client.
fn read_exactly(client: &mut TcpStream, len: usize) -> Vec<u8> {
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = vec![0; len];
    client.read_exact(&mut got).unwrap();
    got
}

/// Whether the client has nothing to read right now.
fn nothing_to_read(client: &mut TcpStream) -> bool {
    client.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let nothing = matches!(client.read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    client.set_nonblocking(false).unwrap();
    nothing
}

/// A job for the first of the requests in `sent` (written in one go, so
/// the rest is buffered behind it, as a pipelining client's would be).
fn pipelined(sent: &[u8]) -> (Job, TcpStream, Arc<crate::net::handoff::Mailbox>) {
    use crate::net::handoff::testing::{request, setup};
    use std::io::Write;
    let (mut conn, mut client, mailbox, shared) = setup();
    client.write_all(sent).unwrap();
    let first = request(&mut conn);
    shared
        .in_flight
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (
        Job::new(first, conn, mailbox.clone(), shared),
        client,
        mailbox,
    )
}

#[test]
fn a_response_goes_out_and_the_connection_goes_home_kept_alive() {
    let (ex, mut client, mailbox) = exchange("/a", DEADLINE);
    ex.set_head(200, 0, Framing::Length(2));
    ex.send(&Direct, b"HTTP/1.1 200 OK\r\n\r\nok".to_vec())
        .unwrap();
    ex.mark_finished();
    assert!(ex.head_sent() && ex.is_finished() && !ex.broken());
    ex.hand_back(true);
    let conn = mailbox.rx.try_recv().expect("the connection went home");
    assert!(!conn.ends_after_write());
    assert_eq!(read_exactly(&mut client, 21), b"HTTP/1.1 200 OK\r\n\r\nok");
}

#[test]
fn a_client_that_reads_nothing_breaks_the_exchange_at_the_write_timeout() {
    let (ex, _client, mailbox) = exchange("/big", Duration::from_millis(200));
    ex.set_head(200, 0, Framing::Length(64 << 20));
    let started = Instant::now();
    let sent = ex.send(&Direct, vec![b'x'; 64 << 20]);
    assert!(
        matches!(sent, Err(ExchangeError::Disconnected(Gone::Failed(ref e))) if e.kind() == io::ErrorKind::TimedOut),
        "{sent:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(ex.broken() && ex.is_finished());
    // Nothing more is written, and the connection closes at once.
    assert!(matches!(
        ex.send(&Direct, b"more".to_vec()),
        Err(ExchangeError::Disconnected(Gone::Closed))
    ));
    ex.hand_back(true);
    assert!(mailbox.rx.try_recv().unwrap().ends_now());
}

#[test]
fn streamed_pieces_after_the_first_gather_until_flushed() {
    let (ex, mut client, _mailbox) = exchange("/stream", DEADLINE);
    ex.set_head(200, 0, Framing::UntilClose);
    assert!(!ex.send_piece(&Direct, &[b"first"], true).unwrap());
    assert_eq!(read_exactly(&mut client, 5), b"first");
    // The second waits for more, and asks to be watched once.
    assert!(ex.send_piece(&Direct, &[b"second"], true).unwrap());
    assert!(!ex.send_piece(&Direct, &[b"third"], true).unwrap());
    assert!(nothing_to_read(&mut client));
    ex.flush(&Direct).unwrap();
    assert_eq!(read_exactly(&mut client, 11), b"secondthird");
    // Nothing gathered: the flusher stops watching.
    assert!(!ex.flush_if_older(Duration::ZERO));
}

#[test]
fn the_flusher_writes_what_gathered_once_it_is_old_enough() {
    let (ex, mut client, _mailbox) = exchange("/stream", DEADLINE);
    ex.set_head(200, 0, Framing::UntilClose);
    ex.send_piece(&Direct, &[b"a"], true).unwrap();
    assert!(ex.send_piece(&Direct, &[b"b"], true).unwrap());
    assert!(ex.flush_if_older(DEADLINE), "too young: still watched");
    assert!(
        !ex.flush_if_older(Duration::ZERO),
        "written: no longer watched"
    );
    assert_eq!(read_exactly(&mut client, 2), b"ab");
}

#[test]
fn only_an_unanswered_job_is_taken_for_a_timeout() {
    let (ex, _client, _mailbox) = exchange("/t", DEADLINE);
    let job = ex.take_job_if_unanswered().expect("nothing was sent");
    drop(job);
    assert!(ex.broken());
    // The app's late answer finds the client gone.
    ex.set_head(200, 0, Framing::Length(0));
    assert!(!ex.head_sent());
    assert!(matches!(
        ex.send(&Direct, Vec::new()),
        Err(ExchangeError::Disconnected(Gone::Closed))
    ));

    let (ex, _client, _mailbox) = exchange("/t", DEADLINE);
    ex.set_head(200, 0, Framing::Chunked);
    assert!(ex.take_job_if_unanswered().is_none(), "the head went out");
}

#[test]
fn a_body_that_breaks_its_framing_closes_the_connection_after_it() {
    let (ex, mut client, mailbox) = exchange("/short", DEADLINE);
    ex.set_head(200, 0, Framing::Length(3));
    let framed = ex.frame(b"abcdef");
    ex.send_now(&Direct, &framed.parts()).unwrap();
    ex.send_now(&Direct, &[ex.finish_framing()]).unwrap();
    ex.hand_back(true);
    assert!(mailbox.rx.try_recv().unwrap().ends_after_write());
    assert_eq!(read_exactly(&mut client, 3), b"abc");
}

#[test]
fn reading_from_the_connection_ends_keep_alive() {
    let (ex, mut client, mailbox) = exchange("/read", DEADLINE);
    std::io::Write::write_all(&mut client, b"after").unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        got.extend(ex.read(&Direct, 16).unwrap().expect("not at the end"));
    }
    assert_eq!(got, b"after");
    ex.set_head(200, 0, Framing::Length(0));
    ex.mark_finished();
    assert!(ex.hand_back_or_keep(true).is_none());
    assert!(mailbox.rx.try_recv().unwrap().ends_after_write());
}

#[test]
fn a_hijacked_connection_is_forgotten() {
    let (ex, _client, mailbox) = exchange("/ws", DEADLINE);
    let fd = ex.hijack(&Direct).unwrap();
    assert!(ex.hijacked() && ex.is_finished());
    assert!(mailbox.rx.try_recv().unwrap().is_hijacked());
    assert!(ex.hijack(&Direct).is_err(), "taken once");
    drop(fd);
}

#[test]
fn responses_to_a_pipelined_batch_go_out_together() {
    let (job, mut client, mailbox) = pipelined(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\nGET /3 HTT",
    );
    let waker = Arc::new(Waker::new().unwrap());
    let answer = |ex: &Exchange, body: &str| {
        let out = format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{body}");
        ex.set_head(200, out.len() - 2, Framing::Length(2));
        ex.send_whole(&Direct, out.into_bytes()).unwrap();
        ex.mark_finished();
    };

    // /2 is buffered: /1's response waits for it.
    let ex = Exchange::new(job, waker.clone(), DEADLINE);
    assert!(ex.pipelined());
    answer(&ex, "r1");
    assert!(nothing_to_read(&mut client));
    let kept = ex.hand_back_or_keep(true).expect("kept for /2");
    let job = kept
        .buffered_request(&crate::http::Limits::default())
        .expect("/2 parsed from the buffer");
    assert_eq!(job.request.head.path(), b"/2");

    // Only part of /3 is here: /2's response is held back as well, and
    // both go out when the thread finds no complete request to serve.
    let ex = Exchange::new(job, waker, DEADLINE);
    answer(&ex, "r2");
    assert!(nothing_to_read(&mut client));
    let kept = ex.hand_back_or_keep(true).expect("kept: /3 has begun");
    let limits = crate::http::Limits::default();
    let Err(Some(kept)) = kept.buffered_request(&limits) else {
        panic!("/3 is incomplete")
    };
    let mut scratch = vec![0; 4096];
    let next = kept.next_request(Duration::ZERO, &limits, &mut scratch, || true);
    assert!(next.is_none());
    let both = read_exactly(&mut client, 2 * 40);
    let text = String::from_utf8_lossy(&both);
    assert!(
        text.ends_with("r1HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nr2"),
        "{text}"
    );
    assert!(
        mailbox.rx.try_recv().is_ok(),
        "home, to read the rest of /3"
    );
}

#[test]
fn a_streamed_head_waits_for_the_first_piece() {
    let (ex, mut client, _mailbox) = exchange("/each", DEADLINE);
    let head = b"HTTP/1.1 200 OK\r\n\r\n";
    ex.set_head(200, head.len(), Framing::UntilClose);
    assert!(ex.queue_head(&Direct, head).unwrap());
    assert!(nothing_to_read(&mut client));
    ex.send_piece(&Direct, &[b"one"], true).unwrap();
    assert_eq!(
        read_exactly(&mut client, head.len() + 3),
        b"HTTP/1.1 200 OK\r\n\r\none"
    );
    // Pieces after the first gather again.
    assert!(ex.send_piece(&Direct, &[b"two"], true).unwrap());
    assert!(nothing_to_read(&mut client));
}

#[test]
fn a_hijack_writes_what_a_pipelined_batch_queued_first() {
    let (job, mut client, _mailbox) =
        pipelined(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    let waker = Arc::new(Waker::new().unwrap());
    let ex = Exchange::new(job, waker.clone(), DEADLINE);
    let out = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nr1";
    ex.set_head(200, out.len() - 2, Framing::Length(2));
    ex.send_whole(&Direct, out.to_vec()).unwrap();
    ex.mark_finished();
    assert!(nothing_to_read(&mut client), "held back for the batch");
    let job = ex
        .hand_back_or_keep(true)
        .expect("kept")
        .buffered_request(&crate::http::Limits::default())
        .expect("/ws");
    let ex = Exchange::new(job, waker, DEADLINE);
    let fd = ex.hijack(&Direct).unwrap();
    assert_eq!(read_exactly(&mut client, out.len()), out);
    drop(fd);
}
