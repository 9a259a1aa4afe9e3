//! Stories of a booking's payment as a studio marketplace meets it through
//! Stripe: Checkout (paid at once or later), one payment told by three
//! events, partial and full refunds, disputes won and lost, and events that
//! arrive out of order. Every event is built from Stripe's own example
//! objects and signed as Stripe signs it.

use serde_json::{json, Value};

use crate::helpers::{Backend, TestServer, TestUser, WsClient};
use crate::stripe_kit::{deliver, event_of, fixture, stripe_env};

both_backends!(
    checkout_pays_at_once_or_later,
    one_payment_told_three_times_changes_the_booking_once,
    a_partial_then_a_full_refund_state_the_amounts,
    a_refund_reported_before_the_payment_still_ends_refunded,
    refunds_told_one_by_one_count_once,
    disputes_are_told_to_everyone_and_end_as_they_end,
);

/// A booking between Ava (client) and Sam (studio owner), with its id, and
/// Ava's socket joined to its room.
async fn booking(server: &TestServer) -> (String, TestUser, WsClient) {
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ws = WsClient::connect_as(server, &ava).await;
    ws.join(&room, None).await;
    (room.trim_start_matches("booking:").to_owned(), ava, ws)
}

/// Ids of one payment: its PaymentIntent and Charge.
fn ids(booking_id: &str) -> (String, String) {
    (format!("pi_{booking_id}"), format!("ch_{booking_id}"))
}

fn checkout_session(booking_id: &str, payment_status: &str, amount: i64, currency: &str) -> Value {
    let mut session = fixture("checkout_session");
    session["client_reference_id"] = json!(booking_id);
    session["payment_status"] = json!(payment_status);
    session["payment_intent"] = json!(ids(booking_id).0);
    session["amount_total"] = json!(amount);
    session["currency"] = json!(currency);
    session
}

fn payment_intent(booking_id: &str, amount: i64, currency: &str) -> Value {
    let mut intent = fixture("payment_intent");
    let (pi, ch) = ids(booking_id);
    intent["id"] = json!(pi);
    intent["latest_charge"] = json!(ch);
    intent["status"] = json!("succeeded");
    intent["amount"] = json!(amount);
    intent["currency"] = json!(currency);
    intent["metadata"] = json!({ "booking_id": booking_id });
    intent
}

/// A charge of the payment; refunds name no booking (empty metadata).
fn charge(booking_id: &str, amount: i64, refunded: i64, currency: &str) -> Value {
    let mut charge = fixture("charge");
    let (pi, ch) = ids(booking_id);
    charge["id"] = json!(ch);
    charge["payment_intent"] = json!(pi);
    charge["amount"] = json!(amount);
    charge["amount_refunded"] = json!(refunded);
    charge["refunded"] = json!(refunded >= amount);
    charge["currency"] = json!(currency);
    charge["metadata"] = json!({});
    charge
}

/// One refund as its own object: it names only the charge.
fn refund(booking_id: &str, id: &str, amount: i64) -> Value {
    let mut refund = fixture("refund");
    refund["id"] = json!(id);
    refund["charge"] = json!(ids(booking_id).1);
    refund["amount"] = json!(amount);
    refund["currency"] = json!("usd");
    refund["status"] = json!("succeeded");
    refund
}

/// A dispute names only the charge (older API versions: no payment intent).
fn dispute(booking_id: &str, status: &str) -> Value {
    let mut dispute = fixture("dispute");
    dispute["charge"] = json!(ids(booking_id).1);
    dispute["payment_intent"] = Value::Null;
    dispute["status"] = json!(status);
    dispute["metadata"] = json!({});
    dispute
}

async fn send(server: &TestServer, event_type: &str, object: Value) -> Value {
    let (_, payload) = event_of(event_type, object);
    deliver(server, &payload).await
}

/// Delivers an event; returns the status the booking's `booking.updated`
/// announces.
async fn moves_to(
    server: &TestServer,
    ws: &mut WsClient,
    event_type: &str,
    object: Value,
) -> String {
    send(server, event_type, object).await;
    let update = ws.recv_type("booking.updated").await;
    update["status"].as_str().unwrap_or_default().to_owned()
}

/// The statuses of the user's (one) booking, oldest first, from the export.
async fn status_of(server: &TestServer, user: &TestUser) -> Vec<String> {
    server.export(user).await["bookings"][0]["status_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|change| change["status"].as_str().unwrap().to_owned())
        .collect()
}

/// Checkout paid by card changes the booking to paid; a bank debit first
/// leaves it waiting (`payment_pending`) until the asynchronous result; a
/// failed debit is `payment_failed`; an expired session changes nothing.
async fn checkout_pays_at_once_or_later(backend: Backend) {
    let server = TestServer::spawn(&backend, &stripe_env());

    let (card, _, mut ws) = booking(&server).await;
    let answer = send(
        &server,
        "checkout.session.completed",
        checkout_session(&card, "paid", 12_000, "eur"),
    )
    .await;
    assert_eq!(answer["outcome"], "applied", "{answer}");
    let update = ws.recv_type("booking.updated").await;
    assert_eq!(update["status"], "paid", "{update}");
    assert_eq!(update["reason"], "Stripe: €120.00 paid", "{update}");

    let (debit, _, mut ws) = booking(&server).await;
    let unpaid = checkout_session(&debit, "unpaid", 12_000, "eur");
    let paid = checkout_session(&debit, "paid", 12_000, "eur");
    assert_eq!(
        moves_to(&server, &mut ws, "checkout.session.completed", unpaid).await,
        "payment_pending"
    );
    assert_eq!(
        moves_to(
            &server,
            &mut ws,
            "checkout.session.async_payment_succeeded",
            paid
        )
        .await,
        "paid"
    );

    let (failed, _, mut ws) = booking(&server).await;
    let unpaid = checkout_session(&failed, "unpaid", 12_000, "eur");
    assert_eq!(
        moves_to(
            &server,
            &mut ws,
            "checkout.session.completed",
            unpaid.clone()
        )
        .await,
        "payment_pending"
    );
    assert_eq!(
        moves_to(
            &server,
            &mut ws,
            "checkout.session.async_payment_failed",
            unpaid
        )
        .await,
        "payment_failed"
    );

    let (expired, ava, mut ws) = booking(&server).await;
    let answer = send(
        &server,
        "checkout.session.expired",
        checkout_session(&expired, "unpaid", 12_000, "eur"),
    )
    .await;
    assert_eq!(answer["outcome"], "recorded", "{answer}");
    ws.expect_silence(300, &["booking.updated"]).await;
    assert_eq!(status_of(&server, &ava).await, vec!["confirmed"]);
}

/// Checkout, its PaymentIntent and its Charge all say "paid": the booking
/// changes once, with one notice in the room and one notification.
async fn one_payment_told_three_times_changes_the_booking_once(backend: Backend) {
    let server = TestServer::spawn(&backend, &stripe_env());
    let (booking_id, ava, mut ws) = booking(&server).await;
    let mut charge_succeeded = charge(&booking_id, 12_000, 0, "usd");
    charge_succeeded["status"] = json!("succeeded");
    let answers = [
        send(
            &server,
            "checkout.session.completed",
            checkout_session(&booking_id, "paid", 12_000, "usd"),
        )
        .await,
        send(
            &server,
            "payment_intent.succeeded",
            payment_intent(&booking_id, 12_000, "usd"),
        )
        .await,
        send(&server, "charge.succeeded", charge_succeeded).await,
    ];
    let outcomes: Vec<&str> = answers
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, vec!["applied", "unchanged", "unchanged"]);
    assert_eq!(ws.recv_type("booking.updated").await["status"], "paid");
    ws.expect_silence(300, &["booking.updated"]).await;
    let room = format!("booking:{booking_id}");
    let history = server.history_over_http(&ava, &room, None, None).await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        1,
        "{history}"
    );
    assert_eq!(status_of(&server, &ava).await, vec!["confirmed", "paid"]);
}

/// A session cut short: ¥5,000 of ¥20,000 goes back, then the rest. Each
/// step says the amounts, in yen's own format (no minor unit), in the
/// frame, the room's notice and the notification.
async fn a_partial_then_a_full_refund_state_the_amounts(backend: Backend) {
    let server = TestServer::spawn(&backend, &stripe_env());
    let (booking_id, ava, mut ws) = booking(&server).await;
    send(
        &server,
        "payment_intent.succeeded",
        payment_intent(&booking_id, 20_000, "jpy"),
    )
    .await;
    assert_eq!(ws.recv_type("booking.updated").await["status"], "paid");

    send(
        &server,
        "charge.refunded",
        charge(&booking_id, 20_000, 5_000, "jpy"),
    )
    .await;
    let update = ws.recv_type("booking.updated").await;
    assert_eq!(update["status"], "partially_refunded", "{update}");
    assert_eq!(update["previous_status"], "paid");
    assert_eq!(
        update["reason"], "Stripe: ¥5,000 of ¥20,000 refunded",
        "{update}"
    );
    let notice = ws
        .recv_matching("the room's notice", |f| {
            f["type"] == "message"
                && f["body"]
                    .as_str()
                    .unwrap_or("")
                    .contains("partially refunded")
        })
        .await;
    assert!(
        notice["body"]
            .as_str()
            .unwrap()
            .contains("¥5,000 of ¥20,000 refunded"),
        "{notice}"
    );
    let notification = ws
        .recv_matching("the refund's notification", |f| {
            f["type"] == "notification" && f["title"] == "Booking partially refunded"
        })
        .await;
    assert!(
        notification["body"]
            .as_str()
            .unwrap()
            .contains("¥5,000 of ¥20,000 refunded"),
        "{notification}"
    );

    send(
        &server,
        "charge.refunded",
        charge(&booking_id, 20_000, 20_000, "jpy"),
    )
    .await;
    let update = ws.recv_type("booking.updated").await;
    assert_eq!(update["status"], "refunded", "{update}");
    assert_eq!(update["reason"], "Stripe: ¥20,000 refunded", "{update}");
    assert_eq!(
        status_of(&server, &ava).await,
        vec!["confirmed", "paid", "partially_refunded", "refunded"]
    );
}

/// The refund's event arrives before the payment's (Stripe does not
/// promise an order): it names only the charge, so nothing is known of its
/// booking yet; when the payment's event names the booking, the booking
/// goes straight to refunded, never back to paid.
async fn a_refund_reported_before_the_payment_still_ends_refunded(backend: Backend) {
    let server = TestServer::spawn(&backend, &stripe_env());
    let (booking_id, ava, mut ws) = booking(&server).await;
    let early = send(
        &server,
        "charge.refunded",
        charge(&booking_id, 9_900, 9_900, "usd"),
    )
    .await;
    assert_eq!(early["outcome"], "no_booking_id", "{early}");
    ws.expect_silence(200, &["booking.updated"]).await;

    send(
        &server,
        "payment_intent.succeeded",
        payment_intent(&booking_id, 9_900, "usd"),
    )
    .await;
    let update = ws.recv_type("booking.updated").await;
    assert_eq!(update["status"], "refunded", "{update}");
    assert_eq!(update["previous_status"], "confirmed");
    // A late duplicate of the success changes nothing.
    let late = send(
        &server,
        "payment_intent.succeeded",
        payment_intent(&booking_id, 9_900, "usd"),
    )
    .await;
    assert_eq!(late["outcome"], "unchanged", "{late}");
    assert_eq!(
        status_of(&server, &ava).await,
        vec!["confirmed", "refunded"]
    );
}

/// A payment is disputed: the participants see `disputed` and every admin
/// is notified; won, the booking is paid again; lost, it is refunded. A
/// dispute reported closed before it was reported opened stays closed.
async fn disputes_are_told_to_everyone_and_end_as_they_end(backend: Backend) {
    let server = TestServer::spawn(&backend, &stripe_env());
    let admin = TestUser::admin("Ada");
    server.put_user(&admin).await;
    let mut admin_ws = WsClient::connect_as(&server, &admin).await;

    let (won, ava, mut ws) = booking(&server).await;
    send(
        &server,
        "payment_intent.succeeded",
        payment_intent(&won, 15_000, "gbp"),
    )
    .await;
    assert_eq!(ws.recv_type("booking.updated").await["status"], "paid");
    let opened = send(
        &server,
        "charge.dispute.created",
        dispute(&won, "needs_response"),
    )
    .await;
    assert_eq!(opened["outcome"], "applied", "{opened}");
    let update = ws.recv_type("booking.updated").await;
    assert_eq!(update["status"], "disputed", "{update}");
    assert_eq!(update["reason"], "Stripe: a payment of £150.00 is disputed");
    let alert = admin_ws
        .recv_matching("the admin's dispute notification", |f| {
            f["type"] == "notification" && f["title"] == "A booking payment is disputed"
        })
        .await;
    assert_eq!(alert["link"], format!("/bookings/{won}"), "{alert}");
    send(&server, "charge.dispute.closed", dispute(&won, "won")).await;
    let update = ws.recv_type("booking.updated").await;
    assert_eq!(
        (
            update["previous_status"].as_str(),
            update["status"].as_str()
        ),
        (Some("disputed"), Some("paid"))
    );
    assert_eq!(
        status_of(&server, &ava).await,
        vec!["confirmed", "paid", "disputed", "paid"]
    );

    let (lost, _, mut ws) = booking(&server).await;
    send(
        &server,
        "payment_intent.succeeded",
        payment_intent(&lost, 15_000, "gbp"),
    )
    .await;
    send(
        &server,
        "charge.dispute.created",
        dispute(&lost, "needs_response"),
    )
    .await;
    send(&server, "charge.dispute.closed", dispute(&lost, "lost")).await;
    let statuses: Vec<String> = [
        ws.recv_type("booking.updated").await,
        ws.recv_type("booking.updated").await,
        ws.recv_type("booking.updated").await,
    ]
    .iter()
    .map(|u| u["status"].as_str().unwrap().to_owned())
    .collect();
    assert_eq!(statuses, vec!["paid", "disputed", "refunded"]);

    let (reordered, _, mut ws) = booking(&server).await;
    send(
        &server,
        "payment_intent.succeeded",
        payment_intent(&reordered, 15_000, "gbp"),
    )
    .await;
    assert_eq!(ws.recv_type("booking.updated").await["status"], "paid");
    send(&server, "charge.dispute.closed", dispute(&reordered, "won")).await;
    let late = send(
        &server,
        "charge.dispute.created",
        dispute(&reordered, "needs_response"),
    )
    .await;
    assert_eq!(late["outcome"], "unchanged", "{late}");
    ws.expect_silence(300, &["booking.updated"]).await;
}

/// Refunds reported as Refund objects (`refund.created`, `refund.updated`)
/// add up, each counted once however often it is reported, and agree with
/// the charge's own cumulative `charge.refunded`.
async fn refunds_told_one_by_one_count_once(backend: Backend) {
    let server = TestServer::spawn(&backend, &stripe_env());
    let (booking_id, ava, mut ws) = booking(&server).await;
    send(
        &server,
        "payment_intent.succeeded",
        payment_intent(&booking_id, 10_000, "usd"),
    )
    .await;
    assert_eq!(ws.recv_type("booking.updated").await["status"], "paid");

    send(
        &server,
        "refund.created",
        refund(&booking_id, "re_first", 2_500),
    )
    .await;
    let update = ws.recv_type("booking.updated").await;
    assert_eq!(
        update["reason"], "Stripe: $25.00 of $100.00 refunded",
        "{update}"
    );
    let again = send(
        &server,
        "refund.updated",
        refund(&booking_id, "re_first", 2_500),
    )
    .await;
    assert_eq!(again["outcome"], "unchanged", "{again}");
    let cumulative = send(
        &server,
        "charge.refunded",
        charge(&booking_id, 10_000, 2_500, "usd"),
    )
    .await;
    assert_eq!(cumulative["outcome"], "unchanged", "{cumulative}");

    send(
        &server,
        "refund.created",
        refund(&booking_id, "re_second", 7_500),
    )
    .await;
    let update = ws.recv_type("booking.updated").await;
    assert_eq!(update["status"], "refunded", "{update}");
    ws.expect_silence(300, &["booking.updated"]).await;
    assert_eq!(
        status_of(&server, &ava).await,
        vec!["confirmed", "paid", "partially_refunded", "refunded"]
    );
}
