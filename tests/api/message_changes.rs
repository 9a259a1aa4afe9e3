//! Stories of people fixing, taking back, answering, reacting to and
//! sharing files in a booking chat: each change takes its own place in the
//! room's sequence, so whoever was away learns it on their next join.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{Backend, TestServer, TestUser, WsClient};

both_backends!(
    ava_fixes_a_typo,
    a_message_taken_back_leaves_a_tombstone,
    a_reply_quotes_what_it_answers_as_it_stands,
    reactions_are_counted_once_per_person,
    files_are_shared_by_link_from_storage_only,
    a_reconnect_learns_every_change_it_missed,
    only_members_change_a_rooms_messages,
    export_and_erasure_cover_changes,
    a_change_resent_with_its_client_id_is_stored_once,
    a_flood_of_edits_keeps_replay_pages_bounded,
);

const SUPABASE_FILE: &str =
    "https://abcd1234.supabase.co/storage/v1/object/sign/stems/vocals-take3.wav?token=xyz";

/// A booking between Ava and Sam with both joined: (server, ava, sam,
/// room, ava's socket, sam's socket).
async fn ava_and_sam(
    backend: &Backend,
    env: &[(&str, &str)],
) -> (TestServer, TestUser, TestUser, String, WsClient, WsClient) {
    let server = TestServer::spawn(backend, env);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.join(&room, None).await;
    (server, ava, sam, room, ava_ws, sam_ws)
}

/// Sends a change frame and returns its answer: an `ack` or an `error`.
async fn change(ws: &mut WsClient, frame: Value) -> Value {
    ws.request(frame, "ack").await
}

fn edit(room: &str, seq: i64, body: &str) -> Value {
    json!({"type": "edit", "room": room, "seq": seq, "body": body})
}

fn delete(room: &str, seq: i64) -> Value {
    json!({"type": "delete", "room": room, "seq": seq})
}

fn react(room: &str, seq: i64, emoji: &str, on: bool) -> Value {
    json!({"type": "react", "room": room, "seq": seq, "emoji": emoji, "on": on})
}

fn assert_refused(reply: &Value, code: &str, what: &str) {
    assert_eq!(reply["type"], "error", "{what} was accepted: {reply}");
    assert_eq!(reply["code"], code, "{what}: {reply}");
}

/// The message of seq `seq` in a history reply.
fn message_at(history: &Value, seq: i64) -> Value {
    history["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {history}"))
        .iter()
        .find(|m| m["seq"] == seq)
        .unwrap_or_else(|| panic!("no message {seq} in {history}"))
        .clone()
}

/// Ava fixes "tomorow" within the edit window: Sam sees the new text at
/// once, history shows it with `edited_at`, and the change sits at a seq of
/// its own. Sam may not edit Ava's words, and once the window has passed
/// neither may she.
async fn ava_fixes_a_typo(backend: Backend) {
    let window = [("MIXROOM__CHAT__EDIT_WINDOW_SECS", "2")];
    let (server, ava, sam, room, mut ava_ws, mut sam_ws) = ava_and_sam(&backend, &window).await;
    let sent = ava_ws
        .send_msg(&room, "ava-1", "See you tomorow at ten")
        .await;
    assert_eq!(sent["seq"], 1);
    sam_ws.recv_type("message").await;

    let ack = change(&mut ava_ws, edit(&room, 1, "See you tomorrow at ten")).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["seq"], 2, "the edit takes the next seq: {ack}");
    assert!(ack.get("client_id").is_none(), "{ack}");
    for ws in [&mut ava_ws, &mut sam_ws] {
        let edited = ws.recv_type("message.edited").await;
        assert_eq!(edited["room"], room.as_str());
        assert_eq!(edited["seq"], 2, "{edited}");
        assert_eq!(edited["message_seq"], 1, "{edited}");
        assert_eq!(edited["body"], "See you tomorrow at ten", "{edited}");
        assert_eq!(edited["by"]["user_id"], ava.id.as_str(), "{edited}");
        assert!(edited["edited_at"].is_string(), "{edited}");
    }

    let sams_try = change(&mut sam_ws, edit(&room, 1, "See you never")).await;
    assert_refused(&sams_try, "forbidden", "Sam editing Ava's message");

    for history in [
        sam_ws.history(&room, None, None).await,
        server.history_over_http(&sam, &room, None, None).await,
    ] {
        let message = message_at(&history, 1);
        assert_eq!(message["body"], "See you tomorrow at ten", "{history}");
        assert!(message["edited_at"].is_string(), "{history}");
        assert_eq!(
            history["messages"].as_array().unwrap().len(),
            1,
            "{history}"
        );
        let changes = history["changes"].as_array().expect("changes listed");
        assert_eq!(changes.len(), 1, "{history}");
        assert_eq!(changes[0]["type"], "message.edited");
        assert_eq!(changes[0]["seq"], 2);
    }

    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let late = change(&mut ava_ws, edit(&room, 1, "See you at eleven")).await;
    assert_refused(&late, "forbidden", "an edit past the window");
    assert!(
        late["message"].as_str().unwrap().contains("edit window"),
        "{late}"
    );
    let nothing_there = change(&mut ava_ws, edit(&room, 9, "ghost")).await;
    assert_refused(
        &nothing_there,
        "not_found",
        "an edit of a seq with no message",
    );
    let empty = change(&mut ava_ws, edit(&room, 1, "  ")).await;
    assert_refused(&empty, "invalid", "an edit to nothing");
    let history = sam_ws.history(&room, None, None).await;
    assert_eq!(message_at(&history, 1)["body"], "See you tomorrow at ten");
    sam_ws
        .expect_silence(300, &["message.edited", "message"])
        .await;
}

/// Sam posts in the wrong booking and takes it back; Nia, an admin,
/// removes Ava's abusive line. Both stay as tombstones (no text, no files)
/// so the sequence keeps no gaps; nothing more can be done to them.
async fn a_message_taken_back_leaves_a_tombstone(backend: Backend) {
    let (server, ava, sam, room, mut ava_ws, mut sam_ws) = ava_and_sam(&backend, &[]).await;
    let nia = TestUser::admin("Nia");
    server.put_user(&nia).await;
    sam_ws
        .send_json(json!({
            "type": "send", "room": room, "client_id": "sam-1", "ref": "sam-1",
            "body": "Invoice for the Jones session attached",
            "attachments": [{"url": SUPABASE_FILE, "name": "jones-invoice.pdf",
                              "size": 48_213, "content_type": "application/pdf"}],
        }))
        .await;
    sam_ws.wait_ack("sam-1").await;
    ava_ws.send_msg(&room, "ava-1", "You are useless").await;
    ava_ws.recv_type("message").await;
    ava_ws.recv_type("message").await;

    let avas_try = change(&mut ava_ws, delete(&room, 1)).await;
    assert_refused(&avas_try, "forbidden", "Ava deleting Sam's message");
    let ack = change(&mut sam_ws, delete(&room, 1)).await;
    assert_eq!(ack["seq"], 3, "{ack}");
    let deleted = ava_ws.recv_type("message.deleted").await;
    assert_eq!(
        (&deleted["seq"], &deleted["message_seq"]),
        (&json!(3), &json!(1)),
        "{deleted}"
    );
    assert_eq!(deleted["by"]["user_id"], sam.id.as_str());

    let mut nia_ws = WsClient::connect_as(&server, &nia).await;
    nia_ws.join(&room, None).await;
    let moderated = change(&mut nia_ws, delete(&room, 2)).await;
    assert_eq!(
        moderated["seq"], 4,
        "an admin deletes any message: {moderated}"
    );
    let deleted = sam_ws
        .recv_matching("Nia's deletion", |f| {
            f["type"] == "message.deleted" && f["seq"] == 4
        })
        .await;
    assert_eq!(deleted["message_seq"], 2, "{deleted}");
    assert_eq!(deleted["by"]["role"], "admin", "{deleted}");

    let history = server.history_over_http(&ava, &room, None, None).await;
    for seq in [1, 2] {
        let tombstone = message_at(&history, seq);
        assert_eq!(tombstone["body"], "", "{tombstone}");
        assert!(tombstone["deleted_at"].is_string(), "{tombstone}");
        assert!(tombstone.get("attachments").is_none(), "{tombstone}");
    }
    let seqs: Vec<i64> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .chain(history["changes"].as_array().unwrap())
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![1, 2, 3, 4], "no gaps: {history}");

    let again = change(&mut sam_ws, delete(&room, 1)).await;
    assert_refused(&again, "not_found", "deleting a tombstone");
    let edit_it = change(&mut sam_ws, edit(&room, 1, "oops")).await;
    assert_refused(&edit_it, "not_found", "editing a tombstone");
    let thumbs = change(&mut ava_ws, react(&room, 2, "👍", true)).await;
    assert_refused(&thumbs, "not_found", "reacting to a tombstone");
    let change_a_change = change(&mut ava_ws, react(&room, 3, "👍", true)).await;
    assert_refused(&change_a_change, "not_found", "reacting to a deletion");
}

/// Sam answers Ava's question; the reply quotes it. When Ava rewords the
/// question, and later takes it back, the quote follows.
async fn a_reply_quotes_what_it_answers_as_it_stands(backend: Backend) {
    let (server, ava, sam, room, mut ava_ws, mut sam_ws) = ava_and_sam(&backend, &[]).await;
    let question = "Can we book the big room? ".repeat(10);
    ava_ws.send_msg(&room, "ava-1", &question).await;
    sam_ws.recv_type("message").await;
    sam_ws
        .send_json(json!({
            "type": "send", "room": room, "client_id": "sam-1", "ref": "sam-1",
            "body": "Yes, it is free", "reply_to": 1,
        }))
        .await;
    let ack = sam_ws.wait_ack("sam-1").await;
    assert_eq!(ack["seq"], 2);
    let reply = ava_ws
        .recv_matching("Sam's reply", |f| f["type"] == "message" && f["seq"] == 2)
        .await;
    assert_eq!(reply["reply_to"]["seq"], 1, "{reply}");
    assert_eq!(reply["reply_to"]["sender"]["user_id"], ava.id.as_str());
    let excerpt = reply["reply_to"]["excerpt"].as_str().unwrap();
    assert!(
        question.starts_with(excerpt) && excerpt.chars().count() == 120,
        "a short quote of the question: {reply}"
    );

    change(&mut ava_ws, edit(&room, 1, "Can we book the small room?")).await;
    let history = server.history_over_http(&sam, &room, None, None).await;
    let reply = message_at(&history, 2);
    assert_eq!(reply["reply_to"]["excerpt"], "Can we book the small room?");

    change(&mut ava_ws, delete(&room, 1)).await;
    let history = sam_ws.history(&room, None, None).await;
    let reply = message_at(&history, 2);
    assert_eq!(reply["reply_to"]["deleted"], true, "{reply}");
    assert_eq!(reply["reply_to"]["excerpt"], "", "{reply}");

    let refusals = [
        (json!(1), "not_found"),
        (json!(99), "not_found"),
        (json!(0), "invalid"),
    ];
    for (n, (reply_to, code)) in refusals.into_iter().enumerate() {
        let refused = sam_ws
            .request(
                json!({"type": "send", "room": room, "client_id": format!("sam-bad-{n}"),
                       "body": "hm", "reply_to": reply_to}),
                "ack",
            )
            .await;
        assert_refused(&refused, code, &format!("a reply to {reply_to}"));
    }
    // A resend of the first reply is answered as stored, though the
    // message it answers is gone since.
    let resent = sam_ws
        .request(
            json!({"type": "send", "room": room, "client_id": "sam-1",
                   "body": "Yes, it is free", "reply_to": 1}),
            "ack",
        )
        .await;
    assert_eq!(
        (&resent["type"], &resent["seq"]),
        (&json!("ack"), &json!(2)),
        "{resent}"
    );
}

/// Sam and Ava thumbs-up a time; Sam's second thumbs-up counts once; Sam
/// takes his back. History shows who reacted with what.
async fn reactions_are_counted_once_per_person(backend: Backend) {
    let (server, ava, sam, room, mut ava_ws, mut sam_ws) = ava_and_sam(&backend, &[]).await;
    ava_ws.send_msg(&room, "ava-1", "Thursday 10:00?").await;
    sam_ws.recv_type("message").await;

    change(&mut sam_ws, react(&room, 1, "👍", true)).await;
    let reacted = ava_ws.recv_type("message.reacted").await;
    assert_eq!(reacted["message_seq"], 1, "{reacted}");
    assert_eq!(reacted["emoji"], "👍");
    assert_eq!(reacted["on"], true);
    assert_eq!(reacted["by"]["user_id"], sam.id.as_str());
    assert_eq!(
        reacted["reactions"],
        json!([{"emoji": "👍", "count": 1, "user_ids": [sam.id]}])
    );

    change(&mut ava_ws, react(&room, 1, "👍", true)).await;
    change(&mut sam_ws, react(&room, 1, "👍", true)).await;
    change(&mut ava_ws, react(&room, 1, "🎚️", true)).await;
    for _ in 0..3 {
        sam_ws.recv_type("message.reacted").await;
    }
    let history = server.history_over_http(&sam, &room, None, None).await;
    assert_eq!(
        message_at(&history, 1)["reactions"],
        json!([
            {"emoji": "👍", "count": 2, "user_ids": [sam.id, ava.id]},
            {"emoji": "🎚️", "count": 1, "user_ids": [ava.id]},
        ]),
        "{history}"
    );

    change(&mut sam_ws, react(&room, 1, "👍", false)).await;
    let off = ava_ws
        .recv_matching("Sam's thumbs-up taken back", |f| {
            f["type"] == "message.reacted" && f["on"] == false
        })
        .await;
    assert_eq!(off["on"], false);
    assert_eq!(
        off["reactions"],
        json!([
            {"emoji": "👍", "count": 1, "user_ids": [ava.id]},
            {"emoji": "🎚️", "count": 1, "user_ids": [ava.id]},
        ])
    );
    for emoji in ["great", "", "<3", "👍 nice"] {
        let refused = change(&mut sam_ws, react(&room, 1, emoji, true)).await;
        assert_refused(&refused, "invalid", &format!("the reaction {emoji:?}"));
    }
}

/// Ava shares her stems by a Supabase Storage link: Sam gets the
/// reference. A link anywhere else, too many files or a bad field is
/// refused with the field named, and nothing is stored.
async fn files_are_shared_by_link_from_storage_only(backend: Backend) {
    let (server, _ava, sam, room, mut ava_ws, mut sam_ws) = ava_and_sam(&backend, &[]).await;
    let stems = json!({"url": SUPABASE_FILE, "name": "vocals take 3.wav",
                       "size": 52_428_800, "content_type": "audio/wav"});
    ava_ws
        .send_json(
            json!({"type": "send", "room": room, "client_id": "ava-1", "ref": "ava-1",
                          "body": "Stems for Thursday", "attachments": [stems]}),
        )
        .await;
    ava_ws.wait_ack("ava-1").await;
    let message = sam_ws.recv_type("message").await;
    assert_eq!(message["attachments"], json!([stems]), "{message}");

    let elsewhere = json!({"url": "https://files.example.com/vocals.wav", "name": "v.wav",
                           "size": 1, "content_type": "audio/wav"});
    let refusals = [
        (json!([elsewhere]), "forbidden", "attachments[0].url"),
        (json!(vec![stems.clone(); 11]), "invalid", "at most 10"),
        (
            json!([{"url": "http://abcd1234.supabase.co/x", "name": "x", "size": 1, "content_type": "audio/wav"}]),
            "invalid",
            "attachments[0].url",
        ),
        (
            json!([{"url": SUPABASE_FILE, "name": "x", "size": 1, "content_type": "wav"}]),
            "invalid",
            "attachments[0].content_type",
        ),
        (
            json!([{"url": SUPABASE_FILE, "name": "x", "size": -1, "content_type": "audio/wav"}]),
            "invalid",
            "expected u64",
        ),
        (
            json!([{"url": SUPABASE_FILE, "name": "x", "size": 1, "content_type": "audio/wav", "owner": "me"}]),
            "invalid",
            "owner",
        ),
    ];
    for (n, (attachments, code, named)) in refusals.into_iter().enumerate() {
        let refused = ava_ws
            .request(
                json!({"type": "send", "room": room, "client_id": format!("bad-{n}"),
                       "body": "files", "attachments": attachments}),
                "ack",
            )
            .await;
        assert_refused(&refused, code, &format!("attachments {attachments}"));
        assert!(
            refused["message"].as_str().unwrap().contains(named),
            "the refusal names {named}: {refused}"
        );
    }
    let history = server.history_over_http(&sam, &room, None, None).await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        1,
        "{history}"
    );
    assert_eq!(message_at(&history, 1)["attachments"], json!([stems]));
}

/// Sam leaves after seeing two messages. Meanwhile Ava edits one, deletes
/// the other, Ava reacts and answers herself. Sam's join with `since`
/// replays each change at its seq, in order, showing things as they stand.
async fn a_reconnect_learns_every_change_it_missed(backend: Backend) {
    let (server, ava, sam, room, mut ava_ws, sam_ws) = ava_and_sam(&backend, &[]).await;
    ava_ws.send_msg(&room, "ava-1", "Session at 10").await;
    ava_ws.send_msg(&room, "ava-2", "Bring the Neumann").await;
    sam_ws.disconnect().await;

    change(&mut ava_ws, edit(&room, 1, "Session at 11")).await;
    change(&mut ava_ws, delete(&room, 2)).await;
    change(&mut ava_ws, react(&room, 1, "✅", true)).await;
    ava_ws
        .send_json(
            json!({"type": "send", "room": room, "client_id": "ava-3", "ref": "ava-3",
                          "body": "Confirmed", "reply_to": 1}),
        )
        .await;
    ava_ws.wait_ack("ava-3").await;

    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    let joined = sam_ws.join(&room, Some(2)).await;
    assert_eq!(joined["last_seq"], 6, "{joined}");
    let mut replayed = Vec::new();
    for _ in 0..4 {
        let frame = sam_ws
            .recv_matching("a replayed entry", |f| {
                f["type"].as_str().is_some_and(|t| t.starts_with("message"))
            })
            .await;
        replayed.push(frame);
    }
    let types: Vec<&str> = replayed
        .iter()
        .map(|f| f["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "message.edited",
            "message.deleted",
            "message.reacted",
            "message"
        ],
        "{replayed:?}"
    );
    let seqs: Vec<i64> = replayed
        .iter()
        .map(|f| f["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4, 5, 6]);
    assert_eq!(replayed[0]["body"], "Session at 11");
    assert_eq!(replayed[1]["message_seq"], 2);
    assert_eq!(replayed[2]["reactions"][0]["user_ids"], json!([ava.id]));
    assert_eq!(replayed[3]["reply_to"]["excerpt"], "Session at 11");

    // Seen from the start, the room reads as it stands now.
    let mut sams_other_tab = WsClient::connect_as(&server, &sam).await;
    sams_other_tab.join(&room, Some(0)).await;
    let first = sams_other_tab.recv_type("message").await;
    assert_eq!(first["body"], "Session at 11", "{first}");
    assert_eq!(first["reactions"][0]["emoji"], "✅", "{first}");
    let second = sams_other_tab.recv_type("message").await;
    assert!(
        second["deleted_at"].is_string() && second["body"] == "",
        "{second}"
    );
}

/// Eve, outside the booking, can neither edit, delete nor react to its
/// messages, whether or not she knows a seq.
async fn only_members_change_a_rooms_messages(backend: Backend) {
    let (server, _ava, _sam, room, mut ava_ws, _sam_ws) = ava_and_sam(&backend, &[]).await;
    ava_ws.send_msg(&room, "ava-1", "Private plans").await;
    let eve = TestUser::client("Eve");
    server.put_user(&eve).await;
    let mut eve_ws = WsClient::connect_as(&server, &eve).await;
    for frame in [
        edit(&room, 1, "hijacked"),
        delete(&room, 1),
        react(&room, 1, "👎", true),
    ] {
        let refused = change(&mut eve_ws, frame.clone()).await;
        assert!(
            ["forbidden", "not_found"].contains(&refused["code"].as_str().unwrap_or("")),
            "{frame}: {refused}"
        );
    }
    let history = ava_ws.history(&room, None, None).await;
    assert_eq!(message_at(&history, 1)["body"], "Private plans");
    assert!(history.get("changes").is_none(), "{history}");
}

/// Sam's export holds his edits, reactions and shared files; when he
/// erases his data, his edited words are blanked, his files and reactions
/// gone, and Ava's message counts no reaction of his.
async fn export_and_erasure_cover_changes(backend: Backend) {
    let (server, ava, sam, room, mut ava_ws, mut sam_ws) = ava_and_sam(&backend, &[]).await;
    ava_ws.send_msg(&room, "ava-1", "Mix notes attached?").await;
    let mix =
        json!({"url": SUPABASE_FILE, "name": "mix-v2.wav", "size": 9, "content_type": "audio/wav"});
    sam_ws
        .send_json(
            json!({"type": "send", "room": room, "client_id": "sam-1", "ref": "sam-1",
                          "body": "Here is mix v2", "attachments": [mix]}),
        )
        .await;
    sam_ws.wait_ack("sam-1").await;
    change(&mut sam_ws, edit(&room, 2, "Here is mix v2 (the loud one)")).await;
    change(&mut sam_ws, react(&room, 1, "🔥", true)).await;
    change(&mut ava_ws, react(&room, 1, "👍", true)).await;

    let export = server.export(&sam).await;
    let messages = export["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "changes are not messages: {export}");
    assert_eq!(messages[0]["body"], "Here is mix v2 (the loud one)");
    assert!(messages[0]["edited_at"].is_string());
    assert_eq!(messages[0]["attachments"], json!([mix]));
    let kinds: Vec<&str> = export["message_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["edit", "react"], "{export}");
    assert_eq!(
        export["reactions"],
        json!([{"room": room, "seq": 1, "emoji": "🔥",
                "at": export["reactions"][0]["at"]}])
    );

    let erased = server
        .http_client()
        .delete(server.http("/v1/me"))
        .bearer_auth(&sam.token)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 200);
    let history = server.history_over_http(&ava, &room, None, None).await;
    let sams = message_at(&history, 2);
    assert_ne!(sams["body"], "Here is mix v2 (the loud one)", "{sams}");
    assert!(!history.to_string().contains("loud one"), "{history}");
    assert!(sams.get("attachments").is_none(), "{sams}");
    assert_eq!(
        message_at(&history, 1)["reactions"],
        json!([{"emoji": "👍", "count": 1, "user_ids": [ava.id]}]),
        "{history}"
    );
    assert!(!history.to_string().contains("🔥"), "{history}");
}

/// Ava's phone loses the acks of her changes and sends each again with
/// the same `client_id`: every resend gets the first ack, nothing is
/// stored twice, and taking a message back twice is not an error. An id
/// reused for another request is refused.
async fn a_change_resent_with_its_client_id_is_stored_once(backend: Backend) {
    let (server, _ava, sam, room, mut ava_ws, _sam_ws) = ava_and_sam(&backend, &[]).await;
    ava_ws.send_msg(&room, "ava-1", "Studio A at 10").await;
    ava_ws.send_msg(&room, "ava-2", "Bring snacks").await;
    let with_id = |mut frame: Value, id: &str| {
        frame["client_id"] = json!(id);
        frame
    };
    for frame in [
        with_id(edit(&room, 1, "Studio B at 10"), "ch-1"),
        with_id(react(&room, 1, "👍", true), "ch-2"),
        with_id(delete(&room, 2), "ch-3"),
    ] {
        let first = change(&mut ava_ws, frame.clone()).await;
        assert_eq!(first["type"], "ack", "{frame}: {first}");
        assert_eq!(first["client_id"], frame["client_id"], "{first}");
        let again = change(&mut ava_ws, frame.clone()).await;
        assert_eq!(
            (&again["type"], &again["seq"], &again["id"]),
            (&first["type"], &first["seq"], &first["id"]),
            "a resend of {frame} gets the first ack: {again}"
        );
    }
    let history = server.history_over_http(&sam, &room, None, None).await;
    let change_seqs: Vec<i64> = history["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(change_seqs, [5, 4, 3], "each change stored once: {history}");
    // An id already used for something else is refused, not answered with
    // the other entry's ack: a send's id for a deletion, an edit's id for
    // an edit of another message, a change's id for a send.
    let reused = change(&mut ava_ws, with_id(delete(&room, 1), "ava-1")).await;
    assert_refused(
        &reused,
        "invalid",
        "a send's client_id reused for a deletion",
    );
    let other_message = change(&mut ava_ws, with_id(edit(&room, 2, "x"), "ch-1")).await;
    assert_refused(
        &other_message,
        "invalid",
        "an edit's client_id for another message",
    );
    let as_send = ava_ws
        .request(
            json!({"type": "send", "room": room, "client_id": "ch-2", "body": "hello"}),
            "ack",
        )
        .await;
    assert_refused(
        &as_send,
        "invalid",
        "a reaction's client_id reused for a send",
    );
    let history = server.history_over_http(&sam, &room, None, None).await;
    assert_eq!(message_at(&history, 1)["body"], "Studio B at 10");
}

/// Ava rewrites a long message ten times. An edit's row holds no text but
/// its frame carries the whole new text: Sam's replay is still paged by
/// `server.replay_max_bytes` of what the frames carry, and paging on
/// delivers every entry once, in order.
async fn a_flood_of_edits_keeps_replay_pages_bounded(backend: Backend) {
    let env = [("MIXROOM__SERVER__REPLAY_MAX_BYTES", "20000")];
    let (server, _ava, sam, room, mut ava_ws, sam_ws) = ava_and_sam(&backend, &env).await;
    sam_ws.disconnect().await;
    ava_ws.send_msg(&room, "ava-1", &"a".repeat(8000)).await;
    for n in 0..10 {
        let letter = char::from(b'b' + n);
        let ack = change(
            &mut ava_ws,
            edit(&room, 1, &letter.to_string().repeat(8000)),
        )
        .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }

    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    let mut since = 0;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let joined = sam_ws.join(&room, Some(since)).await;
        let until = joined["replay_until"].as_i64().unwrap();
        let mut page_bytes = 0;
        for seq in since + 1..=until {
            let frame = sam_ws
                .recv_matching("a replayed entry", |f| {
                    f["type"].as_str().is_some_and(|t| t.starts_with("message")) && f["seq"] == seq
                })
                .await;
            page_bytes += frame.to_string().len();
            seen.push(seq);
        }
        pages += 1;
        assert!(
            page_bytes < 20000 + 8000 + 1000,
            "a page stops after the entry that reaches the limit: {page_bytes} bytes"
        );
        since = until;
        if joined["has_more"] == false {
            break;
        }
    }
    assert_eq!(seen, (1..=11).collect::<Vec<i64>>());
    assert!(
        pages >= 4,
        "eleven 8 KB entries in pages of ~20 KB: {pages} pages"
    );
}
