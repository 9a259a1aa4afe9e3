//! Stories of the support widget: a user opens a conversation and watches
//! the agent's answer stream in; admins read the log and step in. Run with
//! the embedded agent and with a fake Anthropic API.

use serde_json::{json, Value};

use crate::fake_anthropic::{
    cut_answer, overloaded, text_answer, tool_call, FakeAnthropic, FakeReply,
};
use crate::helpers::{Backend, TestServer, TestUser, WsClient};

both_backends!(
    embedded_agent_streams_an_answer,
    another_user_cannot_enter_a_conversation,
    admins_list_read_and_take_over,
    asking_for_a_person_notifies_admins,
    agent_requests_are_rate_limited,
    anthropic_answers_stream_with_the_conversation,
    anthropic_failures_leave_the_conversation_usable,
    booking_status_tool_sees_only_the_askers_bookings,
    daily_token_budget_stops_the_model_not_the_people,
    the_agent_reads_the_conversation_as_it_stands,
);

const API_KEY: &str = "sk-ant-test-4f2b9c";
const MODEL: &str = "claude-test-model";

/// Fast word-by-word streaming for the embedded agent.
const EMBEDDED: &[(&str, &str)] = &[("MIXROOM__AI__EMBEDDED_WORD_DELAY_MS", "1")];

fn anthropic_env(fake: &FakeAnthropic) -> Vec<(String, String)> {
    vec![
        ("MIXROOM__AI__ANTHROPIC_API_KEY".into(), API_KEY.into()),
        ("MIXROOM__AI__ANTHROPIC_BASE_URL".into(), fake.base_url()),
        ("MIXROOM__AI__MODEL".into(), MODEL.into()),
        ("MIXROOM__AI__MAX_TOKENS".into(), "321".into()),
        ("MIXROOM__AI__TIMEOUT_SECS".into(), "2".into()),
    ]
}

fn spawn_with(backend: &Backend, env: &[(String, String)]) -> TestServer {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TestServer::spawn(backend, &env)
}

async fn open_conversation(server: &TestServer, user: &TestUser) -> String {
    server.open_support_conversation(user).await
}

fn conversation_id(room: &str) -> &str {
    room.trim_start_matches("support:")
}

/// An answer as the widget sees it.
struct Answer {
    deltas: Vec<Value>,
    /// The `message` that ended it: the agent's, or a `system` notice.
    message: Value,
}

impl Answer {
    fn streamed_text(&self) -> String {
        self.deltas
            .iter()
            .map(|d| d["delta"].as_str().expect("delta text"))
            .collect()
    }
}

/// Reads `message.delta` frames until the agent's message or a notice.
async fn next_answer(ws: &mut WsClient, room: &str) -> Answer {
    let mut deltas = Vec::new();
    loop {
        let frame = ws
            .recv_matching("a message.delta, the agent's message or a notice", |f| {
                f["room"] == room
                    && (f["type"] == "message.delta"
                        || (f["type"] == "message"
                            && (f["sender"]["role"] == "agent" || f["sender"]["role"] == "system")))
            })
            .await;
        if frame["type"] == "message.delta" {
            deltas.push(frame);
        } else {
            return Answer {
                deltas,
                message: frame,
            };
        }
    }
}

/// Sends `body` and returns the answer it gets.
async fn ask(ws: &mut WsClient, room: &str, client_id: &str, body: &str) -> Answer {
    ws.send_msg(room, client_id, body).await;
    next_answer(ws, room).await
}

/// The agent's answer: streamed, then stored whole under the same id.
fn assert_streamed_answer(answer: &Answer, room: &str) {
    let message = &answer.message;
    assert_eq!(message["sender"]["role"], "agent", "{message}");
    assert!(
        message["sender"]["user_id"].is_null(),
        "the agent has no user id: {message}"
    );
    assert!(!answer.deltas.is_empty(), "no deltas before {message}");
    for delta in &answer.deltas {
        assert_eq!(delta["id"], message["id"], "{delta} vs {message}");
        assert_eq!(delta["room"], room, "{delta}");
    }
    assert_eq!(
        answer.streamed_text(),
        message["body"].as_str().unwrap(),
        "the deltas must add up to the stored body"
    );
}

async fn admin_get(server: &TestServer, user: &TestUser, path: &str) -> reqwest::Response {
    server
        .http_client()
        .get(server.http(path))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("GET")
}

async fn admin_post(server: &TestServer, user: &TestUser, path: &str) -> reqwest::Response {
    server
        .http_client()
        .post(server.http(path))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("POST")
}

/// The stored log, oldest first, read by an admin.
async fn log(server: &TestServer, admin: &TestUser, room: &str) -> Vec<Value> {
    let path = format!("/v1/admin/support/conversations/{}", conversation_id(room));
    let response = admin_get(server, admin, &path).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["messages"].as_array().unwrap().clone()
}

fn roles(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["sender"]["role"].as_str().unwrap())
        .collect()
}

/// Ava asks how to cancel and watches the embedded agent's answer arrive
/// word by word; the whole answer is then in the room's history.
async fn embedded_agent_streams_an_answer(backend: Backend) {
    let server = TestServer::spawn(&backend, EMBEDDED);
    let ava = TestUser::client("Ava");
    let room = open_conversation(&server, &ava).await;
    let mut ws = WsClient::connect_as(&server, &ava).await;
    ws.join(&room, None).await;

    let answer = ask(&mut ws, &room, "q1", "How do I cancel my booking?").await;
    assert_streamed_answer(&answer, &room);
    assert!(answer.deltas.len() > 10, "streamed word by word");
    let body = answer.message["body"].as_str().unwrap();
    assert!(body.contains("cancel"), "{body}");
    assert_eq!(answer.message["sender"]["name"], "Mixroom Assistant");
    ws.expect_silence(200, &["message.delta"]).await;

    // Something the articles do not cover: it says so and offers a person.
    let answer = ask(
        &mut ws,
        &room,
        "q2",
        "What's the best microphone for a trumpet?",
    )
    .await;
    assert_streamed_answer(&answer, &room);
    let body = answer.message["body"].as_str().unwrap();
    assert!(body.contains("couldn't find"), "{body}");
    assert!(body.contains("talk to a human"), "{body}");

    let history = server.history_over_http(&ava, &room, None, None).await;
    let stored: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|m| m["sender"]["role"].as_str().unwrap())
        .collect();
    assert_eq!(stored, ["client", "agent", "client", "agent"]);
}

/// Bob cannot join, read or write Ava's conversation; an admin can join.
async fn another_user_cannot_enter_a_conversation(backend: Backend) {
    let server = TestServer::spawn(&backend, EMBEDDED);
    let ava = TestUser::client("Ava");
    let bob = TestUser::client("Bob");
    let admin = TestUser::admin("Ada");
    let room = open_conversation(&server, &ava).await;

    let mut bob_ws = WsClient::connect_as(&server, &bob).await;
    let reply = bob_ws
        .request(json!({"type": "join", "room": room}), "joined")
        .await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let reply = bob_ws.history(&room, None, None).await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    bob_ws.send_message_frame(&room, "b1", "let me in").await;
    let reply = bob_ws
        .recv_matching("the answer to Bob's send", |f| f["ref"] == "b1")
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let response = server.get_messages(&bob, &room, None, None).await;
    assert_eq!(response.status(), 403);

    let reply = bob_ws
        .request(
            json!({"type": "join", "room": "support:0190f0aa-0000-7000-8000-000000000000"}),
            "joined",
        )
        .await;
    assert_eq!(reply["code"], "not_found", "{reply}");

    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    let mut admin_ws = WsClient::connect_as(&server, &admin).await;
    admin_ws.join(&room, None).await;
    let answer = ask(&mut ava_ws, &room, "q1", "Can I get a refund?").await;
    assert_streamed_answer(&answer, &room);
    // The admin watching sees the same stream; Bob sees nothing of it.
    let watched = next_answer(&mut admin_ws, &room).await;
    assert_eq!(watched.message["id"], answer.message["id"]);
    assert_eq!(watched.streamed_text(), answer.streamed_text());
    bob_ws
        .expect_silence(200, &["message.delta", "message"])
        .await;
}

/// Admins list conversations and read whole logs; non-admins get 403.
/// A takeover silences the agent; the admin answers and Ava sees it live.
async fn admins_list_read_and_take_over(backend: Backend) {
    let server = TestServer::spawn(&backend, EMBEDDED);
    let ava = TestUser::client("Ava");
    let bob = TestUser::studio_owner("Bob");
    let admin = TestUser::admin("Ada");
    let room = open_conversation(&server, &ava).await;
    let id = conversation_id(&room).to_owned();
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    let answer = ask(&mut ava_ws, &room, "q1", "How do refunds work?").await;
    assert_streamed_answer(&answer, &room);

    for path in [
        "/v1/admin/support/conversations".to_owned(),
        format!("/v1/admin/support/conversations/{id}"),
    ] {
        assert_eq!(
            admin_get(&server, &bob, &path).await.status(),
            403,
            "{path}"
        );
        assert_eq!(
            admin_get(&server, &ava, &path).await.status(),
            403,
            "{path}"
        );
    }
    let takeover = format!("/v1/admin/support/conversations/{id}/takeover");
    assert_eq!(admin_post(&server, &ava, &takeover).await.status(), 403);
    let response = server
        .http_client()
        .get(server.http("/v1/admin/support/conversations"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let response = admin_get(&server, &admin, "/v1/admin/support/conversations").await;
    assert_eq!(response.status(), 200);
    let list: Value = response.json().await.unwrap();
    let listed = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id.as_str())
        .unwrap_or_else(|| panic!("conversation missing from {list}"))
        .clone();
    assert_eq!(listed["user_id"], ava.id.as_str());
    assert_eq!(listed["user_name"], "Ava");
    assert_eq!(listed["status"], "ai");

    let messages = log(&server, &admin, &room).await;
    assert_eq!(roles(&messages), ["client", "agent"]);
    assert_eq!(messages[0]["body"], "How do refunds work?");
    assert_eq!(messages[1]["id"], answer.message["id"]);
    assert_eq!(messages[1]["body"], answer.message["body"]);

    let response = admin_post(&server, &admin, &takeover).await;
    assert_eq!(response.status(), 200);
    let taken: Value = response.json().await.unwrap();
    assert_eq!(taken["conversation"]["status"], "human");
    assert_eq!(taken["conversation"]["taken_over_by"], admin.id.as_str());
    let notice = next_answer(&mut ava_ws, &room).await.message;
    assert_eq!(notice["sender"]["role"], "system", "{notice}");
    assert!(notice["body"].as_str().unwrap().contains("Ada"), "{notice}");

    // The agent stays silent from now on; the admin answers, live.
    ava_ws.send_msg(&room, "q2", "Hello? Anyone there?").await;
    ava_ws.expect_silence(800, &["message.delta"]).await;
    let mut admin_ws = WsClient::connect_as(&server, &admin).await;
    admin_ws.join(&room, None).await;
    admin_ws
        .send_msg(
            &room,
            "a1",
            "Hi Ava, Ada here. Let me look into your refund.",
        )
        .await;
    let from_admin = ava_ws
        .recv_matching("the admin's message", |f| {
            f["type"] == "message" && f["sender"]["role"] == "admin"
        })
        .await;
    assert_eq!(from_admin["sender"]["user_id"], admin.id.as_str());

    let messages = log(&server, &admin, &room).await;
    assert_eq!(
        roles(&messages),
        ["client", "agent", "system", "client", "admin"]
    );
    let response = admin_get(
        &server,
        &admin,
        "/v1/admin/support/conversations?status=human",
    )
    .await;
    let list: Value = response.json().await.unwrap();
    assert!(list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == id.as_str()));
    let missing = "/v1/admin/support/conversations/0190f0aa-0000-7000-8000-000000000000";
    assert_eq!(admin_get(&server, &admin, missing).await.status(), 404);
}

/// "I want to talk to a human": the agent says a person is coming, a
/// notice is posted, and each admin gets one in-app notification.
async fn asking_for_a_person_notifies_admins(backend: Backend) {
    let server = TestServer::spawn(&backend, EMBEDDED);
    let ava = TestUser::client("Ava");
    let admin = TestUser::admin("Ada");
    server.put_user(&admin).await;
    let mut admin_ws = WsClient::connect_as(&server, &admin).await;
    let room = open_conversation(&server, &ava).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;

    let answer = ask(&mut ava_ws, &room, "q1", "Can I talk to a human please?").await;
    assert_streamed_answer(&answer, &room);
    let notice = next_answer(&mut ava_ws, &room).await.message;
    assert_eq!(notice["sender"]["role"], "system", "{notice}");
    assert!(
        notice["body"].as_str().unwrap().contains("support team"),
        "{notice}"
    );
    let pushed = admin_ws.recv_type("notification").await;
    assert_eq!(pushed["kind"], "support", "{pushed}");

    // Asking again notifies nobody twice.
    let answer = ask(&mut ava_ws, &room, "q2", "Is a real person coming?").await;
    assert_streamed_answer(&answer, &room);
    admin_ws.expect_silence(300, &["notification"]).await;
    let response = admin_get(&server, &admin, "/v1/notifications").await;
    let inbox: Value = response.json().await.unwrap();
    let support: Vec<&Value> = inbox["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "support")
        .collect();
    assert_eq!(support.len(), 1, "{inbox}");
    assert!(support[0]["link"]
        .as_str()
        .unwrap()
        .contains(conversation_id(&room)));

    let path = format!("/v1/admin/support/conversations/{}", conversation_id(&room));
    let body: Value = admin_get(&server, &admin, &path)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["conversation"]["status"], "escalated");
}

/// Escalations have a per-user budget: a user who asks for a person in
/// one conversation after another notifies the admins once within
/// `limits.support_escalations_per_hour` (here 1); the others are told a
/// person was already asked.
#[tokio::test]
async fn escalations_have_a_per_user_budget() {
    let backend = Backend::sqlite();
    let mut env = EMBEDDED.to_vec();
    env.push(("MIXROOM__LIMITS__SUPPORT_ESCALATIONS_PER_HOUR", "1"));
    let server = TestServer::spawn(&backend, &env);
    let ava = TestUser::client("Ava");
    let admin = TestUser::admin("Ada");
    server.put_user(&admin).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    for i in 0..3 {
        let room = open_conversation(&server, &ava).await;
        ava_ws.join(&room, None).await;
        let answer = ask(
            &mut ava_ws,
            &room,
            &format!("q{i}"),
            "I want to talk to a human",
        )
        .await;
        assert_streamed_answer(&answer, &room);
    }
    let response = admin_get(&server, &admin, "/v1/notifications").await;
    let inbox: Value = response.json().await.unwrap();
    let support = inbox["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "support")
        .count();
    assert_eq!(support, 1, "{inbox}");
    let path = "/v1/admin/support/conversations?status=escalated";
    let listed: Value = admin_get(&server, &admin, path).await.json().await.unwrap();
    assert_eq!(
        listed["conversations"].as_array().unwrap().len(),
        1,
        "{listed}"
    );
}

/// Asking again in a conversation that already asked for a person spends
/// none of the budget: the user's next conversation still reaches the
/// admins.
#[tokio::test]
async fn asking_twice_in_one_conversation_spends_one_escalation() {
    let backend = Backend::sqlite();
    let mut env = EMBEDDED.to_vec();
    env.push(("MIXROOM__LIMITS__SUPPORT_ESCALATIONS_PER_HOUR", "2"));
    let server = TestServer::spawn(&backend, &env);
    let ava = TestUser::client("Ava");
    let admin = TestUser::admin("Ada");
    server.put_user(&admin).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    let first = open_conversation(&server, &ava).await;
    ava_ws.join(&first, None).await;
    let answer = ask(&mut ava_ws, &first, "a0", "a human please").await;
    assert_streamed_answer(&answer, &first);
    let notice = next_answer(&mut ava_ws, &first).await;
    assert_eq!(
        notice.message["sender"]["role"], "system",
        "{}",
        notice.message
    );
    for i in 1..3 {
        let answer = ask(&mut ava_ws, &first, &format!("a{i}"), "a human please").await;
        assert_streamed_answer(&answer, &first);
    }
    let second = open_conversation(&server, &ava).await;
    ava_ws.join(&second, None).await;
    let answer = ask(&mut ava_ws, &second, "b0", "I want to talk to a human").await;
    assert_streamed_answer(&answer, &second);

    let path = "/v1/admin/support/conversations?status=escalated";
    let listed: Value = admin_get(&server, &admin, path).await.json().await.unwrap();
    assert_eq!(
        listed["conversations"].as_array().unwrap().len(),
        2,
        "both conversations reached a person: {listed}"
    );
}

/// Past `ai.requests_per_minute` the user is told to slow down.
async fn agent_requests_are_rate_limited(backend: Backend) {
    let server = TestServer::spawn(
        &backend,
        &[
            ("MIXROOM__AI__EMBEDDED_WORD_DELAY_MS", "1"),
            ("MIXROOM__AI__REQUESTS_PER_MINUTE", "1"),
        ],
    );
    let ava = TestUser::client("Ava");
    let room = open_conversation(&server, &ava).await;
    let mut ws = WsClient::connect_as(&server, &ava).await;
    ws.join(&room, None).await;
    let answer = ask(&mut ws, &room, "q1", "How do I reschedule?").await;
    assert_streamed_answer(&answer, &room);
    let limited = ask(&mut ws, &room, "q2", "And can I get a refund?").await;
    assert!(limited.deltas.is_empty());
    assert_eq!(limited.message["sender"]["role"], "system");
    assert!(
        limited.message["body"].as_str().unwrap().contains("faster"),
        "{}",
        limited.message
    );
}

/// With an API key the model answers: its pieces arrive in order, and each
/// request carries the key, the version, the model and the conversation so
/// far — and nothing else about Ava.
async fn anthropic_answers_stream_with_the_conversation(backend: Backend) {
    let fake = FakeAnthropic::start(vec![
        text_answer(
            &["You can cancel ", "from the booking's ", "page."],
            120,
            12,
        ),
        text_answer(&["Refunds follow ", "the studio's terms."], 150, 9),
    ])
    .await;
    let server = spawn_with(&backend, &anthropic_env(&fake));
    let ava = TestUser::client("Ava");
    let room = open_conversation(&server, &ava).await;
    let mut ws = WsClient::connect_as(&server, &ava).await;
    ws.join(&room, None).await;

    let first = ask(&mut ws, &room, "q1", "How do I cancel?").await;
    assert_streamed_answer(&first, &room);
    let pieces: Vec<&str> = first
        .deltas
        .iter()
        .map(|d| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(pieces, ["You can cancel ", "from the booking's ", "page."]);
    let second = ask(&mut ws, &room, "q2", "And refunds?").await;
    assert_streamed_answer(&second, &room);
    assert_eq!(second.streamed_text(), "Refunds follow the studio's terms.");

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/v1/messages");
        assert_eq!(request.headers["x-api-key"], API_KEY);
        assert_eq!(request.headers["anthropic-version"], "2023-06-01");
        assert!(request.headers["content-type"].starts_with("application/json"));
        let body = &request.body;
        assert_eq!(body["model"], MODEL);
        assert_eq!(body["max_tokens"], 321);
        assert_eq!(body["stream"], true);
        assert!(body["system"].as_str().unwrap().contains("Mixroom"));
        let tools: Vec<&str> = body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(tools, ["list_my_bookings", "escalate_to_human"]);
        let sent = body.to_string();
        for private in [&ava.id, &ava.email(), &ava.name] {
            assert!(
                !sent.contains(private.as_str()),
                "{private} was sent: {sent}"
            );
        }
    }
    assert_eq!(
        requests[0].body["messages"],
        json!([{"role": "user", "content": "How do I cancel?"}])
    );
    assert_eq!(
        requests[1].body["messages"],
        json!([
            {"role": "user", "content": "How do I cancel?"},
            {"role": "assistant", "content": "You can cancel from the booking's page."},
            {"role": "user", "content": "And refunds?"},
        ])
    );
}

/// Ava puts her card number in a question, then edits it out and reacts to
/// the answer: the next request to the model carries the edited text only,
/// and neither the edit nor the reaction starts an answer of its own.
async fn the_agent_reads_the_conversation_as_it_stands(backend: Backend) {
    let fake = FakeAnthropic::start(vec![
        text_answer(&["Sorry to hear that. ", "Which booking?"], 100, 8),
        text_answer(&["Refunds follow ", "the studio's terms."], 150, 9),
    ])
    .await;
    let server = spawn_with(&backend, &anthropic_env(&fake));
    let ava = TestUser::client("Ava");
    let room = open_conversation(&server, &ava).await;
    let mut ws = WsClient::connect_as(&server, &ava).await;
    ws.join(&room, None).await;

    let first = ask(
        &mut ws,
        &room,
        "q1",
        "My card 4242 4242 4242 4242 was charged twice",
    )
    .await;
    let question_seq = first.message["seq"].as_i64().unwrap() - 1;
    let edited = ws
        .request(
            json!({"type": "edit", "room": room, "seq": question_seq,
                   "body": "My card was charged twice"}),
            "ack",
        )
        .await;
    assert_eq!(edited["type"], "ack", "{edited}");
    let answer_seq = first.message["seq"].as_i64().unwrap();
    let reacted = ws
        .request(
            json!({"type": "react", "room": room, "seq": answer_seq, "emoji": "🙏", "on": true}),
            "ack",
        )
        .await;
    assert_eq!(reacted["type"], "ack", "{reacted}");
    ws.expect_silence(500, &["message.delta"]).await;
    assert_eq!(fake.requests().len(), 1, "a change is not a question");

    let second = ask(&mut ws, &room, "q2", "And refunds?").await;
    assert_streamed_answer(&second, &room);
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].body["messages"],
        json!([
            {"role": "user", "content": "My card was charged twice"},
            {"role": "assistant", "content": "Sorry to hear that. Which booking?"},
            {"role": "user", "content": "And refunds?"},
        ])
    );
    assert!(!requests[1].body.to_string().contains("4242"));
}

/// Overloaded (529), a stream cut mid-answer and a provider that never
/// answers: each time Ava is told what happened, no partial answer is
/// stored, and the next question is answered normally.
async fn anthropic_failures_leave_the_conversation_usable(backend: Backend) {
    let fake = FakeAnthropic::start(vec![
        overloaded(),
        cut_answer(&["Partial ans", "wer that never "]),
        FakeReply::Hang,
        text_answer(&["Back to ", "normal."], 80, 5),
    ])
    .await;
    let server = spawn_with(&backend, &anthropic_env(&fake));
    let ava = TestUser::client("Ava");
    let admin = TestUser::admin("Ada");
    let room = open_conversation(&server, &ava).await;
    let mut ws = WsClient::connect_as(&server, &ava).await;
    ws.join(&room, None).await;

    let busy = ask(&mut ws, &room, "q1", "First question").await;
    assert!(busy.deltas.is_empty());
    assert_eq!(busy.message["sender"]["role"], "system");
    assert!(
        busy.message["body"].as_str().unwrap().contains("busy"),
        "{}",
        busy.message
    );

    let cut = ask(&mut ws, &room, "q2", "Second question").await;
    assert_eq!(cut.streamed_text(), "Partial answer that never ");
    assert_eq!(cut.message["sender"]["role"], "system");
    assert!(
        cut.message["body"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{}",
        cut.message
    );
    let aborted = ws.recv_type("message.aborted").await;
    assert_eq!(aborted["id"], cut.deltas[0]["id"], "{aborted}");
    assert_eq!(aborted["room"], room.as_str());

    let hung = ask(&mut ws, &room, "q3", "Third question").await;
    assert!(hung.deltas.is_empty());
    assert!(
        hung.message["body"].as_str().unwrap().contains("too long"),
        "{}",
        hung.message
    );

    let fine = ask(&mut ws, &room, "q4", "Fourth question").await;
    assert_streamed_answer(&fine, &room);
    assert_eq!(fine.streamed_text(), "Back to normal.");

    let messages = log(&server, &admin, &room).await;
    assert_eq!(
        roles(&messages),
        ["client", "system", "client", "system", "client", "system", "client", "agent"]
    );
    assert!(messages.iter().all(|m| m["id"] != cut.deltas[0]["id"]));
    assert!(messages
        .iter()
        .all(|m| !m["body"].as_str().unwrap().contains("Partial")));
    // The model is never shown the notices or the lost partial answer.
    let last = &fake.requests()[3].body;
    assert!(!last.to_string().contains("Partial"), "{last}");
    assert!(!last.to_string().contains("busy"), "{last}");
    assert!(last["messages"][0]["content"]
        .as_str()
        .unwrap()
        .ends_with("Fourth question"));
}

/// "What's my booking status?": the model calls `list_my_bookings`; the
/// server answers with Ava's booking only, and the model's second answer
/// follows the first part of its reply in the same message.
async fn booking_status_tool_sees_only_the_askers_bookings(backend: Backend) {
    let fake = FakeAnthropic::start(vec![
        tool_call("Let me check.", "toolu_01", "list_my_bookings", json!({})),
        text_answer(&["Your session is ", "confirmed."], 200, 8),
    ])
    .await;
    let server = spawn_with(&backend, &anthropic_env(&fake));
    let ava = TestUser::client("Ava");
    let bob = TestUser::client("Bob");
    let sam = TestUser::studio_owner("Sam");
    let ava_booking = server.open_booking(&ava, &[&sam]).await;
    let bob_booking = server.open_booking(&bob, &[&sam]).await;
    let ava_booking = ava_booking.trim_start_matches("booking:");
    let bob_booking = bob_booking.trim_start_matches("booking:");
    server.put_booking(bob_booking, &bob, &[&sam], "paid").await;

    let room = open_conversation(&server, &ava).await;
    let mut ws = WsClient::connect_as(&server, &ava).await;
    ws.join(&room, None).await;
    let answer = ask(&mut ws, &room, "q1", "What's my booking status?").await;
    assert_streamed_answer(&answer, &room);
    assert_eq!(
        answer.streamed_text(),
        "Let me check.\n\nYour session is confirmed."
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let messages = requests[1].body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(
        messages[1]["content"],
        json!([
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01", "name": "list_my_bookings", "input": {}},
        ])
    );
    assert_eq!(messages[2]["role"], "user");
    let result = &messages[2]["content"][0];
    assert_eq!(result["type"], "tool_result");
    assert_eq!(result["tool_use_id"], "toolu_01");
    assert_eq!(result["is_error"], false);
    let content: Value = serde_json::from_str(result["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        content,
        json!({"bookings": [{
            "booking_id": ava_booking,
            "title": "Session",
            "status": "confirmed",
            "starts_at": "2026-12-01T10:00:00Z",
            "your_role": "client",
        }]})
    );
    let sent = requests[1].body.to_string();
    for other in [bob_booking, bob.id.as_str(), sam.id.as_str()] {
        assert!(!sent.contains(other), "{other} was sent: {sent}");
    }
}

/// Past the daily token budget the model is not asked again, but asking
/// for a person still works.
async fn daily_token_budget_stops_the_model_not_the_people(backend: Backend) {
    let fake = FakeAnthropic::start(vec![text_answer(&["Sure, ", "here you go."], 40, 20)]).await;
    let mut env = anthropic_env(&fake);
    env.push(("MIXROOM__AI__DAILY_TOKEN_BUDGET".into(), "50".into()));
    let server = spawn_with(&backend, &env);
    let ava = TestUser::client("Ava");
    let room = open_conversation(&server, &ava).await;
    let mut ws = WsClient::connect_as(&server, &ava).await;
    ws.join(&room, None).await;

    let answer = ask(&mut ws, &room, "q1", "Question one").await;
    assert_streamed_answer(&answer, &room);
    let over = ask(&mut ws, &room, "q2", "Question two").await;
    assert!(over.deltas.is_empty());
    assert_eq!(over.message["sender"]["role"], "system");
    assert!(
        over.message["body"]
            .as_str()
            .unwrap()
            .contains("today's limit"),
        "{}",
        over.message
    );
    let person = ask(&mut ws, &room, "q3", "Then I want to talk to a human").await;
    assert_streamed_answer(&person, &room);
    assert_eq!(fake.requests().len(), 1);
}
