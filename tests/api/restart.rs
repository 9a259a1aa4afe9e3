//! Stories of the server going away: what was acknowledged is never lost,
//! and a clean shutdown tells clients to reconnect.

use serde_json::Value;
use std::collections::HashMap;

use crate::helpers::{Backend, TestServer, TestUser, WsClient, NO_RATE_LIMIT};

both_backends!(acked_messages_survive_a_hard_kill);

/// Ava's 50 acknowledged messages are all there after the server is killed
/// with SIGKILL and started again on the same database.
async fn acked_messages_survive_a_hard_kill(backend: Backend) {
    let mut server = TestServer::spawn(&backend, NO_RATE_LIMIT);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;

    for n in 1..=50 {
        ava_ws
            .send_message_frame(&room, &format!("ava-{n}"), &format!("Mix note {n}"))
            .await;
    }
    let mut acked_ids: HashMap<i64, Value> = HashMap::new();
    for n in 1..=50 {
        let ack = ava_ws.wait_ack(&format!("ava-{n}")).await;
        let seq = ack["seq"].as_i64().expect("ack seq");
        assert!(
            acked_ids.insert(seq, ack["id"].clone()).is_none(),
            "seq {seq} acked twice"
        );
    }

    server.kill_hard();
    drop(ava_ws);
    server.restart();

    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    let joined = ava_ws.join(&room, Some(0)).await;
    assert_eq!(joined["last_seq"], 50, "{joined}");
    for seq in 1..=50 {
        let message = ava_ws.recv_type("message").await;
        assert_eq!(message["seq"], seq, "replay after restart: {message}");
        assert_eq!(message["id"], acked_ids[&seq], "seq {seq}: {message}");
    }
    ava_ws.expect_silence(300, &["message"]).await;

    let after = ava_ws.send_msg(&room, "ava-51", "Back online").await;
    assert_eq!(after["seq"], 51, "{after}");
}

/// SIGTERM closes live sockets with 1001 (reconnect elsewhere) and the
/// process exits cleanly.
#[tokio::test]
async fn sigterm_closes_sockets_with_1001() {
    let backend = Backend::sqlite();
    let mut server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;

    // Watch the socket while the server shuts down: it may wait for the
    // client's close reply.
    let (close, status) = tokio::join!(ava_ws.expect_close(), server.terminate());
    let (code, reason) = close;
    assert_eq!(code, 1001, "closed with {code} {reason:?}");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        tokio::net::TcpStream::connect(server.addr()).await.is_err(),
        "the port is still served after exit"
    );
}
