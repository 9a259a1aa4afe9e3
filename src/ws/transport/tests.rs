//! The transport over real loopback TCP pairs: a test client on one end
//! writes masked frames (in pieces when it matters), the reader or writer
//! under test has the other.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, StreamHandler};
use actix_codec::{Decoder, Encoder};
use actix_http::ws::{Codec, Frame};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use super::reader::FrameReader;
use super::writer::SocketWriter;
use super::*;

const MAX: usize = 1024;

/// A connected pair: (the server's end, the client's end).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    client.set_nodelay(true).unwrap();
    (server, client)
}

/// A frame as a client sends it (masked).
fn client_frame(message: Message) -> Bytes {
    let mut buffer = BytesMut::new();
    Codec::new()
        .client_mode()
        .encode(message, &mut buffer)
        .unwrap();
    buffer.freeze()
}

fn reader(server: TcpStream) -> FrameReader {
    FrameReader::new(Rc::new(server), BytesMut::new(), MAX)
}

/// The next message, failing the test instead of waiting forever.
async fn next(reader: &mut FrameReader) -> Option<Result<Message, ProtocolError>> {
    tokio::time::timeout(Duration::from_secs(5), reader.next())
        .await
        .expect("the reader yielded nothing within 5 s")
}

fn text(message: Option<Result<Message, ProtocolError>>) -> String {
    match message {
        Some(Ok(Message::Text(text))) => text.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

#[actix_rt::test]
async fn frames_arriving_in_pieces_are_decoded_whole() {
    let (server, mut client) = pair().await;
    let first = "a".repeat(300);
    let second = "second frame";
    let mut bytes = client_frame(Message::Text(first.clone().into())).to_vec();
    bytes.extend_from_slice(&client_frame(Message::Text(second.into())));
    // The dispatcher may have read a few bytes past the upgrade request:
    // they start the first frame.
    let (received, rest) = bytes.split_at(3);
    let mut reader = FrameReader::new(Rc::new(server), BytesMut::from(received), MAX);
    let rest = rest.to_vec();
    let send = async move {
        // Seven bytes at a time: a header split from its payload, a
        // piece holding the end of one frame and the start of the next.
        for piece in rest.chunks(7) {
            client.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        client
    };
    let (client, first_read) = tokio::join!(send, next(&mut reader));
    assert_eq!(text(first_read), first);
    assert_eq!(text(next(&mut reader).await), second);
    drop(client);
    assert!(
        next(&mut reader).await.is_none(),
        "the stream ends with EOF"
    );
}

#[actix_rt::test]
async fn a_fragmented_message_with_a_ping_between_its_fragments() {
    let (server, mut client) = pair().await;
    let mut reader = reader(server);
    // One codec: it knows a continuation was started.
    let mut codec = Codec::new().client_mode();
    let mut bytes = BytesMut::new();
    for message in [
        Message::Continuation(Item::FirstText(Bytes::from_static(b"hello"))),
        Message::Continuation(Item::Continue(Bytes::from_static(b", "))),
        Message::Ping(Bytes::from_static(b"are you there")),
        Message::Continuation(Item::Last(Bytes::from_static(b"world"))),
    ] {
        codec.encode(message, &mut bytes).unwrap();
    }
    client.write_all(&bytes).await.unwrap();
    let mut fragments = Fragments::default();
    let mut push = |message: Option<Result<Message, ProtocolError>>| match message {
        Some(Ok(Message::Continuation(item))) => fragments.push(item, MAX),
        other => panic!("expected a continuation frame, got {other:?}"),
    };
    assert_eq!(push(next(&mut reader).await), Assembled::Incomplete);
    assert_eq!(push(next(&mut reader).await), Assembled::Incomplete);
    // The control frame comes in between, as sent, and does not disturb
    // the message being put together.
    match next(&mut reader).await {
        Some(Ok(Message::Ping(payload))) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected the ping, got {other:?}"),
    }
    assert_eq!(
        push(next(&mut reader).await),
        Assembled::Text("hello, world".into())
    );
}

#[test]
fn fragments_over_the_limit_binary_or_not_utf8_are_refused() {
    let part = |n: usize| Bytes::from(vec![b'x'; n]);
    let mut fragments = Fragments::default();
    assert_eq!(
        fragments.push(Item::FirstText(part(MAX / 2)), MAX),
        Assembled::Incomplete
    );
    // Each frame is within the limit; the message is not (close 1009).
    assert_eq!(
        fragments.push(Item::Continue(part(MAX / 2 + 1)), MAX),
        Assembled::TooLarge
    );
    // What follows the refusal is skipped.
    assert_eq!(
        fragments.push(Item::Last(part(1)), MAX),
        Assembled::Incomplete
    );

    assert_eq!(
        fragments.push(Item::FirstBinary(part(1)), MAX),
        Assembled::Binary
    );
    assert_eq!(
        fragments.push(Item::Last(part(1)), MAX),
        Assembled::Incomplete
    );

    // "é" split across two fragments is UTF-8 once whole...
    fragments.push(Item::FirstText(Bytes::from_static(&[0xc3])), MAX);
    assert_eq!(
        fragments.push(Item::Last(Bytes::from_static(&[0xa9])), MAX),
        Assembled::Text("é".into())
    );
    // ...half of it is not.
    fragments.push(Item::FirstText(Bytes::from_static(b"ok ")), MAX);
    assert_eq!(
        fragments.push(Item::Last(Bytes::from_static(&[0xc3])), MAX),
        Assembled::NotUtf8
    );
}

#[actix_rt::test]
async fn a_frame_over_the_limit_ends_the_stream_with_1009() {
    let (server, mut client) = pair().await;
    let mut reader = reader(server);
    let exactly = "x".repeat(MAX);
    client
        .write_all(&client_frame(Message::Text(exactly.clone().into())))
        .await
        .unwrap();
    assert_eq!(text(next(&mut reader).await), exactly);
    let over = "x".repeat(MAX + 1);
    client
        .write_all(&client_frame(Message::Text(over.into())))
        .await
        .unwrap();
    match next(&mut reader).await {
        Some(Err(error)) => assert_eq!(close_for(&error).0, 1009),
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(next(&mut reader).await.is_none(), "nothing after the error");
}

#[actix_rt::test]
async fn a_text_frame_that_is_not_utf8_ends_the_stream_with_1007() {
    let (server, mut client) = pair().await;
    let mut reader = reader(server);
    // A binary frame's bytes with the opcode made text's: 0xc3 0x28 is
    // not UTF-8.
    let mut frame = client_frame(Message::Binary(Bytes::from_static(&[0xc3, 0x28]))).to_vec();
    frame[0] = 0x81;
    client.write_all(&frame).await.unwrap();
    match next(&mut reader).await {
        Some(Err(error)) => assert_eq!(close_for(&error).0, 1007),
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(next(&mut reader).await.is_none(), "nothing after the error");
}

/// A session that does what `WsSession` does with a client's close.
struct Echo;

impl Actor for Echo {
    type Context = WebsocketContext<Self>;
}

impl StreamHandler<Result<Message, ProtocolError>> for Echo {
    fn handle(&mut self, item: Result<Message, ProtocolError>, ctx: &mut Self::Context) {
        if let Ok(Message::Close(reason)) = item {
            close(ctx, reason);
        }
    }
}

fn limits(timeout: Duration) -> Limits {
    Limits {
        max_frame_bytes: MAX,
        write: WriteLimits {
            timeout,
            max_queued_bytes: 64 << 20,
        },
    }
}

#[actix_rt::test]
async fn a_client_close_is_answered_and_the_socket_ends() {
    let (server, mut client) = pair().await;
    let sockets = TaskTracker::new();
    let metrics = Arc::new(Metrics::new());
    let limits = limits(Duration::from_secs(5));
    run(server, BytesMut::new(), limits, metrics, &sockets, Echo);
    let close_frame = client_frame(Message::Close(Some(CloseReason {
        code: CloseCode::Normal,
        description: Some("bye".into()),
    })));
    client.write_all(&close_frame).await.unwrap();

    let mut received = BytesMut::new();
    let answer = loop {
        let mut codec = Codec::new().client_mode();
        if let Some(frame) = codec.decode(&mut received).unwrap() {
            break frame;
        }
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_buf(&mut received));
        assert!(
            read.await.unwrap().unwrap() > 0,
            "closed without a close frame"
        );
    };
    match answer {
        Frame::Close(Some(reason)) => assert_eq!(reason.code, CloseCode::Normal),
        other => panic!("expected a close frame, got {other:?}"),
    }
    // The server shuts its side down after the close: an orderly end.
    let mut rest = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut rest)).await;
    assert_eq!(read.unwrap().unwrap(), 0, "EOF after the close frame");
    // Once the client closes too, the socket's task ends.
    client.shutdown().await.unwrap();
    sockets.close();
    tokio::time::timeout(Duration::from_secs(1), sockets.wait())
        .await
        .expect("the socket's task ended");
}

#[actix_rt::test]
async fn a_peer_that_never_reads_is_dropped_after_the_write_deadline() {
    let (server, mut client) = pair().await;
    // Small kernel buffers on both ends, as `upgrade` sets for the server.
    let _ = socket2::SockRef::from(&server).set_send_buffer_size(SEND_BUFFER);
    let _ = socket2::SockRef::from(&client).set_recv_buffer_size(64 * 1024);
    let metrics = Arc::new(Metrics::new());
    // 16 MiB to write, far past what the kernel holds, then nothing more
    // while the session runs on.
    let chunk = Bytes::from(vec![0u8; 64 * 1024]);
    let outgoing =
        futures_util::stream::iter((0..256).map(move |_| Ok::<_, String>(chunk.clone())))
            .chain(futures_util::stream::pending());
    let timeout = Duration::from_millis(300);
    let socket = Rc::new(server);
    let writer = SocketWriter::new(
        socket.clone(),
        outgoing,
        limits(timeout).write,
        metrics.clone(),
    );
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("the writer gave up");
    assert!(started.elapsed() >= timeout);
    assert_eq!(
        Rc::strong_count(&socket),
        1,
        "the writer let go of the socket"
    );
    let refused = metrics
        .connections_refused
        .with_label_values(&["write_timeout"]);
    assert_eq!(refused.get(), 1);
    // The socket is closed abortively: the client, reading at last, ends
    // with a reset rather than the rest of the 16 MiB.
    drop(socket);
    let mut sink = vec![0u8; 1 << 20];
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), client.read(&mut sink)).await {
            Ok(Ok(0)) => break None,
            Ok(Ok(_)) => {}
            Ok(Err(error)) => break Some(error.kind()),
            Err(_) => panic!("the socket was not closed"),
        }
    };
    assert_eq!(ended, Some(std::io::ErrorKind::ConnectionReset));
}

/// An upgrade request from `ip`, with `origin` when given.
fn upgrade_request(path: &str, ip: [u8; 4], origin: Option<&str>) -> actix_http::RequestHead {
    use actix_http::header::{HeaderName, HeaderValue};
    let mut head = actix_http::RequestHead::default();
    head.method = actix_http::Method::GET;
    head.uri = path.parse().unwrap();
    head.peer_addr = Some((ip, 40000).into());
    let mut set = |name: &'static str, value: &str| {
        head.headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        );
    };
    set("upgrade", "websocket");
    set("connection", "upgrade");
    set("sec-websocket-version", "13");
    set("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(origin) = origin {
        set("origin", origin);
    }
    head
}

#[test]
fn every_upgrade_policy_is_checked_in_order() {
    let mut settings = crate::config::Settings::load(None).unwrap().limits;
    settings.trusted_proxies = 0;
    settings.connects_burst_per_ip = 2;
    let limiters = crate::limits::Limiters::new(&settings);
    let metrics = Metrics::new();
    let allowed = vec!["https://app.example".to_owned()];
    let policy = Policy {
        limiters: &limiters,
        metrics: &metrics,
        allowed_origins: &allowed,
    };
    let status = |head: &actix_http::RequestHead| admit(&policy, head).map_err(|r| r.status());

    let admitted = status(&upgrade_request(crate::ws::PATH, [10, 0, 0, 1], None));
    assert_eq!(admitted.unwrap().client_ip, Some([10, 0, 0, 1].into()));
    // The path comes first: a bad Origin elsewhere is a 404.
    let elsewhere = upgrade_request("/v1/other", [10, 0, 0, 2], Some("https://evil.example"));
    assert_eq!(status(&elsewhere).unwrap_err(), 404);
    let mut not_websocket = upgrade_request(crate::ws::PATH, [10, 0, 0, 2], None);
    not_websocket.headers.remove("sec-websocket-key");
    assert_eq!(status(&not_websocket).unwrap_err(), 400);
    let foreign = upgrade_request(crate::ws::PATH, [10, 0, 0, 3], Some("https://evil.example"));
    assert_eq!(status(&foreign).unwrap_err(), 403);
    let own = upgrade_request(crate::ws::PATH, [10, 0, 0, 3], Some("https://app.example"));
    assert!(status(&own).is_ok());
    // 10.0.0.3 has used its burst of two (the refused Origin counted).
    assert_eq!(status(&own).unwrap_err(), 429);
    let limited = metrics.rate_limited.with_label_values(&["connects"]);
    assert_eq!(limited.get(), 1);
}
