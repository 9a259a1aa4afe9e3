//! Reliability under faults: the server is killed hard again and again
//! while a client sends, or stopped with SIGTERM mid-stream; afterwards
//! every acknowledged message is there exactly once and the sequence has no
//! holes. `MIXROOM_SOAK_CYCLES` and `MIXROOM_SOAK_MESSAGES` make the crash
//! soak longer (README, "Reliability").

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::helpers::{Backend, TestServer, TestUser, WsClient, NO_RATE_LIMIT};

both_backends!(crash_soak, sigterm_under_load_loses_nothing);

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Reads the room from seq 1 and checks it: gap-free, each client_id once.
async fn stored(server: &TestServer, user: &TestUser, room: &str) -> Vec<Value> {
    let mut ws = WsClient::connect_as(server, user).await;
    let joined = ws.join(room, Some(0)).await;
    let last_seq = joined["last_seq"].as_i64().unwrap();
    let mut messages = Vec::new();
    for expected in 1..=last_seq {
        let message = ws.recv_type("message").await;
        assert_eq!(
            message["seq"], expected,
            "the sequence has a hole or is out of order"
        );
        messages.push(message);
    }
    let client_ids: HashSet<&str> = messages
        .iter()
        .map(|m| m["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        client_ids.len(),
        messages.len(),
        "a client_id is stored twice"
    );
    messages
}

/// Kill the server hard while messages are in flight, restart, repeat;
/// then resend everything that was never acknowledged, as a client does.
async fn crash_soak(backend: Backend) {
    let cycles = env_number("MIXROOM_SOAK_CYCLES", 3);
    let per_cycle = env_number("MIXROOM_SOAK_MESSAGES", 100);
    let mut server = TestServer::spawn(&backend, NO_RATE_LIMIT);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut acked: HashMap<String, (i64, String)> = HashMap::new();
    let mut sent: Vec<String> = Vec::new();

    for cycle in 0..cycles {
        let mut ws = WsClient::connect_as(&server, &ava).await;
        ws.join(&room, None).await;
        let ids: Vec<String> = (0..per_cycle).map(|i| format!("c{cycle}-m{i}")).collect();
        for id in &ids {
            ws.send_message_frame(&room, id, &format!("cycle {cycle}: {id}"))
                .await;
        }
        sent.extend(ids.iter().cloned());
        // Half the acks, then the crash: the rest are in flight.
        for id in ids.iter().take(per_cycle / 2) {
            let ack = ws.wait_ack(id).await;
            acked.insert(
                id.clone(),
                (
                    ack["seq"].as_i64().unwrap(),
                    ack["id"].as_str().unwrap().to_owned(),
                ),
            );
        }
        server.kill_hard();
        drop(ws);
        server.restart();
    }

    // Every acknowledged message survived every crash, unchanged.
    let messages = stored(&server, &sam, &room).await;
    let by_client: HashMap<&str, &Value> = messages
        .iter()
        .map(|m| (m["client_id"].as_str().unwrap(), m))
        .collect();
    for (client_id, (seq, id)) in &acked {
        let message = by_client
            .get(client_id.as_str())
            .unwrap_or_else(|| panic!("acked message {client_id} was lost"));
        assert_eq!(message["seq"], *seq, "{client_id} moved");
        assert_eq!(message["id"], id.as_str(), "{client_id} changed id");
    }

    // The client resends what it never saw acked: each is stored once.
    let mut ws = WsClient::connect_as(&server, &ava).await;
    for client_id in sent.iter().filter(|c| !acked.contains_key(*c)) {
        ws.send_message_frame(&room, client_id, "resent").await;
    }
    for client_id in sent.iter().filter(|c| !acked.contains_key(*c)) {
        ws.wait_ack(client_id).await;
    }
    let messages = stored(&server, &sam, &room).await;
    assert_eq!(messages.len(), sent.len(), "every message exactly once");
    println!(
        "crash soak: cycles={cycles} messages={} acked_before_crash={} lost=0 duplicates=0",
        sent.len(),
        acked.len()
    );
}

/// SIGTERM while a client is sending: what the server accepted is stored
/// before it exits, sockets are closed with 1001, and resending the rest
/// completes the conversation without a duplicate.
async fn sigterm_under_load_loses_nothing(backend: Backend) {
    let mut server = TestServer::spawn(&backend, NO_RATE_LIMIT);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ws = WsClient::connect_as(&server, &ava).await;
    ws.join(&room, None).await;
    let ids: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    for id in &ids {
        ws.send_message_frame(&room, id, id).await;
    }
    let (collected, status) = tokio::join!(
        async {
            let mut acks = HashMap::new();
            loop {
                match ws.recv_any_or_close().await {
                    Ok(frame) if frame["type"] == "ack" => {
                        acks.insert(
                            frame["client_id"].as_str().unwrap().to_owned(),
                            frame["seq"].as_i64().unwrap(),
                        );
                    }
                    Ok(_) => {}
                    Err((code, _)) => break (acks, code),
                }
            }
        },
        server.terminate()
    );
    let (acks, code) = collected;
    assert!(
        code == 1001 || acks.len() == ids.len(),
        "closed with {code} after {} acks",
        acks.len()
    );
    assert!(status.success(), "exit status {status}");

    server.restart();
    let stored_now = stored(&server, &sam, &room).await;
    for (client_id, seq) in &acks {
        assert!(
            stored_now
                .iter()
                .any(|m| m["client_id"] == client_id.as_str() && m["seq"] == *seq),
            "acked {client_id} lost in shutdown"
        );
    }
    let mut ws = WsClient::connect_as(&server, &ava).await;
    for id in &ids {
        ws.send_message_frame(&room, id, id).await;
    }
    for id in &ids {
        ws.wait_ack(id).await;
    }
    assert_eq!(stored(&server, &sam, &room).await.len(), ids.len());
}
