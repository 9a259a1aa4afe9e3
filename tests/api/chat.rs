//! Stories of people chatting in a booking room.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{now_secs, seqs, Backend, TestServer, TestUser, WsClient, NO_RATE_LIMIT};

both_backends!(
    two_users_chat,
    outsider_is_refused,
    duplicate_client_id,
    resume_with_since,
    history_paging,
    typing_and_read_receipts,
    presence,
    ping_pong_and_token_refresh,
    busy_rooms_keep_their_order,
);

/// Ava (the client) and Sam (the studio owner) talk about their session.
async fn two_users_chat(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let eli = TestUser::engineer("Eli");
    let room = server.open_booking(&ava, &[&sam, &eli]).await;

    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    let ava_joined = ava_ws.join(&room, None).await;
    assert_eq!(ava_joined["last_seq"], 0, "a new room: {ava_joined}");
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    let sam_joined = sam_ws.join(&room, None).await;
    assert_eq!(sam_joined["last_seq"], 0, "a new room: {sam_joined}");
    assert_member(&sam_joined, &ava, true);
    assert_member(&sam_joined, &sam, true);

    let question = "Hi Sam, can we start at ten?";
    let ack = ava_ws.send_msg(&room, "ava-1", question).await;
    assert_eq!(ack["seq"], 1, "the first message of a room: {ack}");
    assert!(
        ack["id"].as_str().is_some_and(|id| !id.is_empty()),
        "ack without id: {ack}"
    );
    assert!(!ack["sent_at"].is_null(), "ack without sent_at: {ack}");
    for ws in [&mut ava_ws, &mut sam_ws] {
        let message = ws.recv_type("message").await;
        assert_message(&message, &room, &ack, &ava, "ava-1", question);
    }

    let answer = "Ten works, see you then.";
    let reply_ack = sam_ws.send_msg(&room, "sam-1", answer).await;
    assert_eq!(reply_ack["seq"], 2, "the second message: {reply_ack}");
    for ws in [&mut ava_ws, &mut sam_ws] {
        let message = ws.recv_type("message").await;
        assert_message(&message, &room, &reply_ack, &sam, "sam-1", answer);
    }
}

/// Eve has no part in Ava's booking: she can neither join, write nor read
/// it; Nia, an admin, can.
async fn outsider_is_refused(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let eve = TestUser::client("Eve");
    let nia = TestUser::admin("Nia");
    let room = server.open_booking(&ava, &[&sam]).await;
    server.put_user(&eve).await;
    server.put_user(&nia).await;

    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.join(&room, None).await;
    let first = ava_ws.send_msg(&room, "ava-1", "Booked!").await;
    assert_eq!(sam_ws.recv_type("message").await["id"], first["id"]);

    let mut eve_ws = WsClient::connect_as(&server, &eve).await;
    let join = json!({"type": "join", "room": room, "ref": "eve-join"});
    assert_refused(&eve_ws.request(join, "joined").await, "eve-join");

    let send = json!({
        "type": "send", "room": room, "client_id": "eve-1", "body": "let me in", "ref": "eve-send",
    });
    let refused = eve_ws.request(send, "ack").await;
    assert_eq!(
        refused["type"], "error",
        "Eve's send was accepted: {refused}"
    );
    assert_eq!(
        refused["ref"], "eve-send",
        "error without the ref: {refused}"
    );

    let history = json!({"type": "history", "room": room, "ref": "eve-history"});
    assert_refused(&eve_ws.request(history, "history").await, "eve-history");

    let status = server.get_messages(&eve, &room, None, None).await.status();
    assert!(
        status == 403 || status == 404,
        "Eve read the room over HTTP: {status}"
    );

    // Nothing of Eve's reached the room: no frame, and Ava's next message
    // takes the very next seq.
    sam_ws.expect_silence(300, &["message"]).await;
    let second = ava_ws.send_msg(&room, "ava-2", "Anyone else here?").await;
    assert_eq!(second["seq"], 2, "Eve's refused send took a seq: {second}");
    let seen = sam_ws.recv_type("message").await;
    assert_eq!(seen["id"], second["id"], "Sam's next message: {seen}");

    let mut nia_ws = WsClient::connect_as(&server, &nia).await;
    let joined = nia_ws.join(&room, None).await;
    assert_eq!(joined["last_seq"], 2, "{joined}");
    let history = server.history_over_http(&nia, &room, None, None).await;
    assert_eq!(seqs(&history), [2, 1], "{history}");
    let messages = history["messages"].as_array().unwrap();
    assert!(
        messages
            .iter()
            .all(|m| m["sender"]["user_id"] == ava.id.as_str()),
        "a message not from Ava: {history}"
    );
}

/// Ava's app retries a send whose ack it missed: it is stored once.
async fn duplicate_client_id(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.join(&room, None).await;

    let first = ava_ws
        .send_msg(&room, "ava-retry", "Sending this twice")
        .await;
    let again = ava_ws
        .send_msg(&room, "ava-retry", "Sending this twice")
        .await;
    assert_eq!(
        (&first["id"], &first["seq"]),
        (&again["id"], &again["seq"]),
        "a resent client_id must get the same ack"
    );
    let next = ava_ws
        .send_msg(&room, "ava-next", "And something new")
        .await;
    assert_eq!(next["seq"], 2, "the resend took a seq: {next}");

    // Both members see the message once, then the next one.
    for ws in [&mut ava_ws, &mut sam_ws] {
        assert_eq!(ws.recv_type("message").await["id"], first["id"]);
        assert_eq!(ws.recv_type("message").await["id"], next["id"]);
    }
    sam_ws.expect_silence(300, &["message"]).await;

    let history = server.history_over_http(&sam, &room, None, None).await;
    assert_eq!(seqs(&history), [2, 1], "{history}");
}

/// Ava runs six bookings at once and fires messages into all of them
/// without waiting, to a server that may keep four commits in flight (on
/// PostgreSQL). Every room keeps her order: acks and deliveries count
/// 1, 2, 3… in the order she wrote.
async fn busy_rooms_keep_their_order(backend: Backend) {
    const ROOMS: usize = 6;
    const PER_ROOM: usize = 30;
    let mut env = NO_RATE_LIMIT.to_vec();
    env.push(("MIXROOM__DATABASE__WRITERS", "4"));
    let server = TestServer::spawn(&backend, &env);
    let ava = TestUser::client("Ava");
    let mut rooms = Vec::new();
    for i in 0..ROOMS {
        let studio = TestUser::studio_owner(&format!("Studio {i}"));
        rooms.push(server.open_booking(&ava, &[&studio]).await);
    }
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    for room in &rooms {
        ava_ws.join(room, None).await;
    }

    for n in 1..=PER_ROOM {
        for (r, room) in rooms.iter().enumerate() {
            ava_ws
                .send_message_frame(room, &format!("r{r}-{n}"), &format!("take {n}"))
                .await;
        }
    }
    let mut acked: Vec<Vec<(i64, i64)>> = vec![Vec::new(); ROOMS];
    let mut delivered: Vec<Vec<(i64, String)>> = vec![Vec::new(); ROOMS];
    while acked.iter().any(|got| got.len() < PER_ROOM)
        || delivered.iter().any(|got| got.len() < PER_ROOM)
    {
        let frame = ava_ws.recv().await;
        let room_of = |frame: &Value| rooms.iter().position(|room| frame["room"] == room.as_str());
        match frame["type"].as_str() {
            Some("ack") => {
                let client_id = frame["client_id"].as_str().unwrap_or_default();
                let (r, n) = client_id[1..]
                    .split_once('-')
                    .map(|(r, n)| (r.parse::<usize>().unwrap(), n.parse::<i64>().unwrap()))
                    .unwrap_or_else(|| panic!("an ack for a send not made: {frame}"));
                acked[r].push((n, frame["seq"].as_i64().unwrap_or(-1)));
            }
            Some("message") => {
                let r = room_of(&frame).unwrap_or_else(|| panic!("a stranger room: {frame}"));
                let body = frame["body"].as_str().unwrap_or_default().to_owned();
                delivered[r].push((frame["seq"].as_i64().unwrap_or(-1), body));
            }
            Some("error") => panic!("a send was refused: {frame}"),
            _ => {}
        }
    }
    for r in 0..ROOMS {
        let in_order: Vec<(i64, i64)> = (1..=PER_ROOM as i64).map(|n| (n, n)).collect();
        let mut acks = acked[r].clone();
        acks.sort_unstable();
        assert_eq!(acks, in_order, "room {r}: (take, seq) of the acks");
        let expected: Vec<(i64, String)> = (1..=PER_ROOM as i64)
            .map(|n| (n, format!("take {n}")))
            .collect();
        assert_eq!(delivered[r], expected, "room {r}: deliveries in order");
    }
}

/// PostgreSQL: a booking room's row is held by someone else's
/// transaction, so storing its next message waits. Ava's messages in her
/// other booking are stored and acked meanwhile (a second commit beside
/// the stuck one), and the stuck room keeps its order once it is free.
#[tokio::test]
async fn a_stuck_room_does_not_hold_up_the_others() {
    let Some(backend) = Backend::postgres() else {
        eprintln!("skipped: MIXROOM_TEST_DATABASE_URL not set");
        return;
    };
    let server = TestServer::spawn(&backend, &[("MIXROOM__DATABASE__WRITERS", "2")]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let eli = TestUser::engineer("Eli");
    let stuck = server.open_booking(&ava, &[&sam]).await;
    let free = server.open_booking(&ava, &[&eli]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&stuck, None).await;
    ava_ws.join(&free, None).await;
    assert_eq!(ava_ws.send_msg(&stuck, "s-1", "first").await["seq"], 1);

    // Another session of the database holds the stuck room's row.
    let (client, connection) = tokio_postgres::connect(backend.url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM rooms WHERE id = '{stuck}' FOR UPDATE"
        ))
        .await
        .expect("lock the room row");

    ava_ws.send_message_frame(&stuck, "s-2", "second").await;
    ava_ws.send_message_frame(&stuck, "s-3", "third").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ack = ava_ws.send_msg(&free, "f-1", "meanwhile").await;
    assert_eq!(ack["seq"], 1, "{ack}");
    ava_ws.expect_silence(100, &["ack"]).await;

    client
        .batch_execute("ROLLBACK")
        .await
        .expect("release the row");
    assert_eq!(ava_ws.wait_ack("s-2").await["seq"], 2);
    assert_eq!(ava_ws.wait_ack("s-3").await["seq"], 3);
    drop(client);
    let _ = driver.await;
    let history = server.history_over_http(&ava, &stuck, None, None).await;
    assert_eq!(seqs(&history), [3, 2, 1], "{history}");
}

/// Sam's connection drops; when he comes back he gets exactly what he missed.
async fn resume_with_since(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.join(&room, None).await;

    let first = ava_ws
        .send_msg(&room, "ava-1", "Here is the reference track")
        .await;
    let seen = sam_ws.recv_type("message").await;
    assert_eq!(seen["seq"], 1, "{seen}");
    sam_ws.disconnect().await;

    let mut missed = Vec::new();
    for n in 2..=4 {
        let ack = ava_ws
            .send_msg(&room, &format!("ava-{n}"), &format!("Note {n}"))
            .await;
        assert_eq!(ack["seq"], n, "{ack}");
        missed.push(ack);
    }

    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws
        .send_json(json!({"type": "join", "room": room, "since": first["seq"]}))
        .await;
    let is_join_or_message =
        |frame: &Value| frame["type"] == "joined" || frame["type"] == "message";
    let joined = sam_ws
        .recv_matching("joined or message", is_join_or_message)
        .await;
    assert_eq!(
        joined["type"], "joined",
        "`joined` must come before the replay: {joined}"
    );
    assert_eq!(joined["last_seq"], 4, "{joined}");
    for ack in &missed {
        let replayed = sam_ws
            .recv_matching("a replayed message", is_join_or_message)
            .await;
        assert_eq!(replayed["type"], "message", "{replayed}");
        assert_eq!(
            (&replayed["seq"], &replayed["id"]),
            (&ack["seq"], &ack["id"]),
            "replay out of order or wrong: {replayed}"
        );
    }

    let live = ava_ws.send_msg(&room, "ava-5", "Welcome back").await;
    assert_eq!(live["seq"], 5, "{live}");
    let received = sam_ws.recv_type("message").await;
    assert_eq!(
        (&received["seq"], &received["id"]),
        (&live["seq"], &live["id"])
    );
    sam_ws.expect_silence(300, &["message"]).await;
}

/// Ava scrolls back through a long conversation, by frame and over HTTP.
async fn history_paging(backend: Backend) {
    let server = TestServer::spawn(&backend, NO_RATE_LIMIT);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;

    // Pipelined: all sends first, then the acks.
    for n in 1..=120 {
        ava_ws
            .send_message_frame(&room, &format!("ava-{n}"), &format!("Take {n}"))
            .await;
    }
    let mut id_by_seq = vec![Value::Null; 121];
    for n in 1..=120 {
        let ack = ava_ws.wait_ack(&format!("ava-{n}")).await;
        let seq = ack["seq"].as_u64().expect("ack seq") as usize;
        assert!(
            (1..=120).contains(&seq) && id_by_seq[seq].is_null(),
            "seqs must be 1..=120 without repeats: {ack}"
        );
        id_by_seq[seq] = ack["id"].clone();
    }
    let assert_page = |page: &Value, expected_seqs: Vec<i64>, has_more: bool| {
        assert_eq!(seqs(page), expected_seqs, "{page}");
        assert_eq!(page["has_more"], has_more, "has_more: {page}");
        for message in page["messages"].as_array().unwrap() {
            let seq = message["seq"].as_u64().unwrap() as usize;
            assert_eq!(message["id"], id_by_seq[seq], "{message}");
        }
    };

    let newest = ava_ws.history(&room, None, None).await;
    assert_eq!(newest["type"], "history", "{newest}");
    assert_page(&newest, (71..=120).rev().collect(), true);
    let oldest = ava_ws.history(&room, Some(71), Some(100)).await;
    assert_eq!(oldest["type"], "history", "{oldest}");
    assert_page(&oldest, (1..=70).rev().collect(), false);

    let newest_http = server.history_over_http(&ava, &room, None, None).await;
    assert_page(&newest_http, (71..=120).rev().collect(), true);
    let oldest_http = server
        .history_over_http(&ava, &room, Some(71), Some(100))
        .await;
    assert_page(&oldest_http, (1..=70).rev().collect(), false);

    // More than 100 is clamped or refused.
    let too_many = ava_ws.history(&room, None, Some(500)).await;
    match too_many["type"].as_str() {
        Some("history") => assert!(seqs(&too_many).len() <= 100, "{too_many}"),
        _ => assert_eq!(too_many["code"], "invalid", "{too_many}"),
    }
    let response = server.get_messages(&ava, &room, None, Some(500)).await;
    let status = response.status();
    if status == 200 {
        let page: Value = response.json().await.expect("history JSON");
        assert!(seqs(&page).len() <= 100, "limit=500 gave more than 100");
    } else {
        assert!(
            status == 400 || status == 422,
            "limit=500 answered {status}"
        );
    }
}

/// Sam sees Ava typing; Ava sees that Sam has read her message.
async fn typing_and_read_receipts(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.join(&room, None).await;

    ava_ws
        .send_json(json!({"type": "typing", "room": room}))
        .await;
    let typing = sam_ws.recv_type("typing").await;
    assert_eq!(typing["room"], room.as_str(), "{typing}");
    assert_eq!(typing["user_id"], ava.id.as_str(), "{typing}");
    ava_ws.expect_silence(300, &["typing"]).await;

    let ack = ava_ws
        .send_msg(&room, "ava-1", "Did you get the stems?")
        .await;
    let message = sam_ws.recv_type("message").await;
    assert_eq!(message["id"], ack["id"]);
    sam_ws
        .send_json(json!({"type": "read", "room": room, "seq": message["seq"]}))
        .await;
    let read = ava_ws.recv_type("read").await;
    assert_eq!(read["room"], room.as_str(), "{read}");
    assert_eq!(read["user_id"], sam.id.as_str(), "{read}");
    assert_eq!(read["seq"], 1, "{read}");
}

/// Ava sees Sam come online in the room and go away again.
async fn presence(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;

    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.join(&room, None).await;
    let is_sams_presence =
        |frame: &Value| frame["type"] == "presence" && frame["user_id"] == sam.id.as_str();
    let online = ava_ws
        .recv_matching("Sam's presence", is_sams_presence)
        .await;
    assert_eq!(online["room"], room.as_str(), "{online}");
    assert_eq!(online["online"], true, "{online}");

    sam_ws.disconnect().await;
    let offline = ava_ws
        .recv_matching("Sam going offline", |frame| {
            is_sams_presence(frame) && frame["online"] == false
        })
        .await;
    assert_eq!(offline["room"], room.as_str(), "{offline}");
}

/// The app keeps its socket alive with pings and refreshes its token before
/// it expires; a socket that does not refresh is closed with 4001.
async fn ping_pong_and_token_refresh(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    server.put_user(&ava).await;

    let mut ws = WsClient::connect_as(&server, &ava).await;
    ws.ping().await;

    let started = tokio::time::Instant::now();
    let short_lived = ava.token_expiring_at(now_secs() + 3);
    let mut expiring = WsClient::connect(&server).await;
    expiring.authenticate(&short_lived).await;
    let mut refreshed = WsClient::connect(&server).await;
    refreshed.authenticate(&short_lived).await;
    refreshed
        .send_json(json!({"type": "auth", "token": ava.token}))
        .await;
    // Answered after the refresh was read, so it happened before expiry.
    refreshed.ping().await;
    expiring.ping().await;

    let (code, reason) = expiring.expect_close().await;
    assert_eq!(code, 4001, "expired token closed with {code} {reason:?}");

    // Past the first token's expiry (and a moment past the close) the
    // refreshed socket still answers.
    let checkpoint = (started + Duration::from_secs(4))
        .max(tokio::time::Instant::now() + Duration::from_millis(500));
    tokio::time::sleep_until(checkpoint).await;
    refreshed.ping().await;
}

/// `member` appears in `joined.members` with name and role.
fn assert_member(joined: &Value, member: &TestUser, expect_online: bool) {
    let members = joined["members"]
        .as_array()
        .unwrap_or_else(|| panic!("joined without members: {joined}"));
    let entry = members
        .iter()
        .find(|m| m["user_id"] == member.id.as_str())
        .unwrap_or_else(|| panic!("{} missing from members: {joined}", member.name));
    assert_eq!(entry["name"], member.name.as_str(), "{entry}");
    assert_eq!(entry["role"], member.role.as_str(), "{entry}");
    assert_eq!(entry["online"], expect_online, "{entry}");
}

/// A `message` frame carries everything its ack promised, and its sender.
fn assert_message(
    message: &Value,
    room: &str,
    ack: &Value,
    sender: &TestUser,
    client_id: &str,
    body: &str,
) {
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["room"], room, "{message}");
    assert_eq!(message["seq"], ack["seq"], "{message}");
    assert_eq!(message["id"], ack["id"], "{message}");
    assert_eq!(message["client_id"], client_id, "{message}");
    assert_eq!(message["body"], body, "{message}");
    assert_eq!(
        message["sender"]["user_id"],
        sender.id.as_str(),
        "{message}"
    );
    assert_eq!(message["sender"]["name"], sender.name.as_str(), "{message}");
    assert_eq!(message["sender"]["role"], sender.role.as_str(), "{message}");
    assert!(!message["sent_at"].is_null(), "no sent_at: {message}");
}

/// A refusal to someone outside the booking: `forbidden` or `not_found`,
/// echoing the request's `ref`.
fn assert_refused(reply: &Value, reference: &str) {
    assert_eq!(reply["type"], "error", "an outsider was let in: {reply}");
    assert!(
        reply["code"] == "forbidden" || reply["code"] == "not_found",
        "refusal code: {reply}"
    );
    assert_eq!(reply["ref"], reference, "error without the ref: {reply}");
}
