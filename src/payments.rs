//! A booking's payment as Stripe describes it, and the booking status it
//! leads to. Pure domain: no storage, no HTTP.
//!
//! Stripe sends several events for one payment (a Checkout Session, its
//! PaymentIntent, its Charge), in any order, and refunds and disputes name
//! only the charge or the payment intent. So events are not turned into
//! status changes one by one: each adds what it says to the payment's
//! [`PaymentFacts`], which only ever grow (a flag set stays set, a refunded
//! amount only rises), and the booking's status is derived from all the
//! facts together ([`PaymentFacts::status`]). However many events describe
//! one change, and in whatever order they come, the status moves once and
//! never backwards. `docs/payments.md` draws the machine.

use serde_json::Value;

use crate::domain::booking::BookingStatus;
use BookingStatus::*;

/// A dispute's state, as far as the booking is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisputeState {
    Open,
    Won,
    Lost,
}

impl DisputeState {
    pub fn as_str(self) -> &'static str {
        match self {
            DisputeState::Open => "open",
            DisputeState::Won => "won",
            DisputeState::Lost => "lost",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "open" => Some(DisputeState::Open),
            "won" => Some(DisputeState::Won),
            "lost" => Some(DisputeState::Lost),
            _ => None,
        }
    }
}

/// What the events of one payment have said so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentFacts {
    /// Minor units (cents; yen for JPY).
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub amount_refunded: i64,
    pub paid: bool,
    pub failed: bool,
    /// Checkout completed with a delayed payment method: not paid yet.
    pub pending: bool,
    pub dispute: Option<DisputeState>,
}

impl PaymentFacts {
    /// Adds what one event says. Facts only grow: a closed dispute is not
    /// reopened by a late "created", a refund is not undone by a late
    /// success.
    pub fn absorb(&mut self, event: &PaymentEvent) {
        // A refunded charge states what was charged: refunds are measured
        // against it.
        if self.amount.is_none() || matches!(event.kind, EventKind::Refunded { .. }) {
            self.amount = event.amount.or(self.amount);
        }
        if self.currency.is_none() {
            self.currency = event.currency.clone();
        }
        match &event.kind {
            EventKind::Succeeded => self.paid = true,
            EventKind::Failed => self.failed = true,
            EventKind::Pending => self.pending = true,
            EventKind::Expired | EventKind::RefundReported | EventKind::Other => {}
            EventKind::Refunded { amount_refunded } => {
                self.amount_refunded = self.amount_refunded.max(*amount_refunded);
            }
            EventKind::DisputeOpened => {
                if self.dispute.is_none() {
                    self.dispute = Some(DisputeState::Open);
                }
            }
            EventKind::DisputeClosed { won } => {
                self.dispute = Some(if *won {
                    DisputeState::Won
                } else {
                    DisputeState::Lost
                });
            }
        }
    }

    /// Combines what two stored records of one payment said (a refund
    /// recorded before its booking was known, and the booking's payment).
    pub fn merge(&mut self, other: &PaymentFacts) {
        self.amount = self.amount.or(other.amount);
        if self.currency.is_none() {
            self.currency = other.currency.clone();
        }
        self.amount_refunded = self.amount_refunded.max(other.amount_refunded);
        self.paid |= other.paid;
        self.failed |= other.failed;
        self.pending |= other.pending;
        let rank = |d: Option<DisputeState>| match d {
            None => 0,
            Some(DisputeState::Open) => 1,
            Some(DisputeState::Won) => 2,
            Some(DisputeState::Lost) => 3,
        };
        if rank(other.dispute) > rank(self.dispute) {
            self.dispute = other.dispute;
        }
    }

    /// The booking status these facts lead to (`None`: nothing to say yet).
    /// Money that went back outranks money that came in, an open dispute
    /// outranks both; a dispute won leaves the status it interrupted.
    pub fn status(&self) -> Option<BookingStatus> {
        match self.dispute {
            Some(DisputeState::Open) => return Some(Disputed),
            Some(DisputeState::Lost) => return Some(Refunded),
            Some(DisputeState::Won) | None => {}
        }
        if self.amount_refunded > 0 {
            let whole = self
                .amount
                .is_some_and(|amount| self.amount_refunded >= amount);
            return Some(if whole { Refunded } else { PartiallyRefunded });
        }
        if self.paid {
            Some(Paid)
        } else if self.failed {
            Some(PaymentFailed)
        } else if self.pending {
            Some(PaymentPending)
        } else {
            None
        }
    }

    /// A sentence about the money, for the status change's reason (and so
    /// the frame, the room's notice, the notification and the email).
    pub fn describe(&self, status: BookingStatus) -> Option<String> {
        let currency = self.currency.as_deref()?;
        let money = |minor: i64| format_amount(minor, currency);
        match (status, self.amount) {
            (PartiallyRefunded, Some(amount)) => Some(format!(
                "{} of {} refunded",
                money(self.amount_refunded),
                money(amount)
            )),
            (PartiallyRefunded, None) => Some(format!("{} refunded", money(self.amount_refunded))),
            (Refunded, Some(amount)) if self.dispute == Some(DisputeState::Lost) => Some(format!(
                "dispute lost: {} returned to the payer",
                money(amount)
            )),
            (Refunded, Some(amount)) => Some(format!("{} refunded", money(amount))),
            (Disputed, Some(amount)) => Some(format!("a payment of {} is disputed", money(amount))),
            (Paid, Some(amount)) => Some(format!("{} paid", money(amount))),
            _ => None,
        }
    }
}

/// Which statuses a payment may move a booking out of. A booking the
/// backend moved on (in session, completed, cancelled) takes money that
/// went back or a dispute, never a late "paid" or "failed".
pub fn may_follow(current: BookingStatus, target: BookingStatus) -> bool {
    let progressed = matches!(current, InSession | Completed | Cancelled | Refunded);
    let money_back = matches!(target, Refunded | PartiallyRefunded | Disputed);
    !progressed || money_back
}

/// What one verified Stripe event says about a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentEvent {
    pub kind: EventKind,
    /// From `metadata.booking_id` or a Checkout Session's `client_reference_id`.
    pub booking_id: Option<String>,
    pub payment_intent: Option<String>,
    pub charge: Option<String>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    /// A Refund object's own id, amount and whether it succeeded.
    pub refund: Option<Refund>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub id: String,
    pub amount: i64,
    pub succeeded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Succeeded,
    Failed,
    Pending,
    /// A Checkout Session that expired unpaid: recorded, changes nothing.
    Expired,
    /// `amount_refunded` so far (cumulative), in minor units.
    Refunded {
        amount_refunded: i64,
    },
    /// One refund told by itself (`refund.*`): the store adds up the
    /// refunds of the payment, each once.
    RefundReported,
    DisputeOpened,
    DisputeClosed {
        won: bool,
    },
    /// A type this server does not act on.
    Other,
}

impl PaymentEvent {
    /// Reads an event's `type` and `data.object` (already verified).
    pub fn from_stripe(event_type: &str, object: &Value) -> PaymentEvent {
        let text = |key: &str| object[key].as_str().map(str::to_owned);
        // Expanded objects (`{"id": ...}`) appear where ids usually stand.
        let id_of = |key: &str| text(key).or_else(|| object[key]["id"].as_str().map(str::to_owned));
        let booking_id = object["metadata"]["booking_id"]
            .as_str()
            .or_else(|| object["client_reference_id"].as_str())
            .filter(|id| !id.is_empty())
            .map(str::to_owned);
        let currency = text("currency").map(|c| c.to_ascii_lowercase());
        let mut event = PaymentEvent {
            kind: EventKind::Other,
            booking_id,
            payment_intent: None,
            charge: None,
            amount: object["amount"].as_i64(),
            currency,
            refund: None,
        };
        match object["object"].as_str().unwrap_or_default() {
            "payment_intent" => {
                event.payment_intent = text("id");
                event.charge = id_of("latest_charge");
            }
            "charge" => {
                event.charge = text("id");
                event.payment_intent = id_of("payment_intent");
            }
            "checkout.session" => {
                event.payment_intent = id_of("payment_intent");
                event.amount = object["amount_total"].as_i64();
            }
            "refund" | "dispute" => {
                event.charge = id_of("charge");
                event.payment_intent = id_of("payment_intent");
                if object["object"] == "refund" {
                    event.refund = text("id").map(|id| Refund {
                        id,
                        amount: object["amount"].as_i64().unwrap_or(0),
                        succeeded: object["status"] == "succeeded",
                    });
                }
                // A refund's or a dispute's amount is not the payment's.
                event.amount = None;
            }
            _ => {}
        }
        event.kind = match event_type {
            "payment_intent.succeeded" | "charge.succeeded" => EventKind::Succeeded,
            "payment_intent.payment_failed" | "charge.failed" => EventKind::Failed,
            "checkout.session.completed" => match object["payment_status"].as_str() {
                Some("paid" | "no_payment_required") => EventKind::Succeeded,
                _ => EventKind::Pending,
            },
            "checkout.session.async_payment_succeeded" => EventKind::Succeeded,
            "checkout.session.async_payment_failed" => EventKind::Failed,
            "checkout.session.expired" => EventKind::Expired,
            "charge.refunded" => EventKind::Refunded {
                amount_refunded: object["amount_refunded"].as_i64().unwrap_or(0),
            },
            "refund.created" | "refund.updated" | "charge.refund.updated" => {
                EventKind::RefundReported
            }
            "charge.dispute.created" => EventKind::DisputeOpened,
            "charge.dispute.closed" => EventKind::DisputeClosed {
                // `warning_closed`: an inquiry that never became a dispute.
                won: matches!(object["status"].as_str(), Some("won" | "warning_closed")),
            },
            _ => EventKind::Other,
        };
        event
    }

    /// Whether the server acts on this event at all.
    pub fn is_known(&self) -> bool {
        self.kind != EventKind::Other
    }
}

/// Currencies Stripe counts in whole units (no minor unit).
const ZERO_DECIMAL: &[&str] = &[
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
];
/// Currencies with three decimals.
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

/// `minor` units of `currency` as a person reads them: `$25.00`, `€9.50`,
/// `¥5,000`, `1,250.000 KWD`.
pub fn format_amount(minor: i64, currency: &str) -> String {
    let currency = currency.to_ascii_lowercase();
    let decimals = if ZERO_DECIMAL.contains(&currency.as_str()) {
        0
    } else if THREE_DECIMAL.contains(&currency.as_str()) {
        3
    } else {
        2
    };
    let scale = 10i64.pow(decimals);
    let (whole, fraction) = (minor.abs() / scale, minor.abs() % scale);
    let digits = whole.to_string();
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let number = if decimals == 0 {
        grouped
    } else {
        format!("{grouped}.{fraction:0width$}", width = decimals as usize)
    };
    let sign = if minor < 0 { "-" } else { "" };
    match currency.as_str() {
        "usd" => format!("{sign}${number}"),
        "eur" => format!("{sign}€{number}"),
        "gbp" => format!("{sign}£{number}"),
        "jpy" => format!("{sign}¥{number}"),
        other => format!("{sign}{number} {}", other.to_ascii_uppercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts(events: &[(&str, Value)]) -> PaymentFacts {
        let mut facts = PaymentFacts::default();
        for (kind, object) in events {
            facts.absorb(&PaymentEvent::from_stripe(kind, object));
        }
        facts
    }

    fn charge(amount_refunded: i64) -> Value {
        json!({"object": "charge", "id": "ch_1", "amount": 10_000, "currency": "usd",
               "amount_refunded": amount_refunded, "payment_intent": "pi_1"})
    }

    #[test]
    fn amounts_read_as_people_read_them() {
        assert_eq!(format_amount(2500, "usd"), "$25.00");
        assert_eq!(format_amount(950, "EUR"), "€9.50");
        assert_eq!(format_amount(5000, "jpy"), "¥5,000");
        assert_eq!(format_amount(123_456_789, "gbp"), "£1,234,567.89");
        assert_eq!(format_amount(1_250_000, "kwd"), "1,250.000 KWD");
        assert_eq!(format_amount(700, "chf"), "7.00 CHF");
        assert_eq!(format_amount(300, "krw"), "300 KRW");
    }

    #[test]
    fn one_payment_described_three_times_is_one_fact() {
        let once = facts(&[(
            "payment_intent.succeeded",
            json!({"object": "payment_intent", "id": "pi_1", "amount": 10_000, "currency": "usd"}),
        )]);
        let thrice = facts(&[
            (
                "checkout.session.completed",
                json!({"object": "checkout.session", "payment_intent": "pi_1", "payment_status": "paid", "amount_total": 10_000, "currency": "usd"}),
            ),
            (
                "payment_intent.succeeded",
                json!({"object": "payment_intent", "id": "pi_1", "amount": 10_000, "currency": "usd"}),
            ),
            ("charge.succeeded", charge(0)),
        ]);
        assert_eq!(once.status(), Some(Paid));
        assert_eq!(once, thrice);
    }

    #[test]
    fn refunds_partial_then_whole_and_out_of_order() {
        let partial = facts(&[
            (
                "payment_intent.succeeded",
                json!({"object": "payment_intent", "amount": 10_000, "currency": "usd"}),
            ),
            ("charge.refunded", charge(2_500)),
        ]);
        assert_eq!(partial.status(), Some(PartiallyRefunded));
        assert_eq!(
            partial.describe(PartiallyRefunded).unwrap(),
            "$25.00 of $100.00 refunded"
        );
        let whole = facts(&[
            ("charge.refunded", charge(2_500)),
            ("charge.refunded", charge(10_000)),
        ]);
        assert_eq!(whole.status(), Some(Refunded));
        // A refund reported before the success still ends refunded, and a
        // late, smaller cumulative amount does not lower it.
        let reordered = facts(&[
            ("charge.refunded", charge(10_000)),
            ("charge.refunded", charge(2_500)),
            (
                "payment_intent.succeeded",
                json!({"object": "payment_intent", "amount": 10_000}),
            ),
        ]);
        assert_eq!(reordered.status(), Some(Refunded));
    }

    #[test]
    fn disputes_open_win_and_lose_in_any_order() {
        let paid = (
            "payment_intent.succeeded",
            json!({"object": "payment_intent", "amount": 10_000, "currency": "usd"}),
        );
        let opened = (
            "charge.dispute.created",
            json!({"object": "dispute", "charge": "ch_1", "amount": 10_000}),
        );
        let won = (
            "charge.dispute.closed",
            json!({"object": "dispute", "charge": "ch_1", "status": "won"}),
        );
        let lost = (
            "charge.dispute.closed",
            json!({"object": "dispute", "charge": "ch_1", "status": "lost"}),
        );
        assert_eq!(
            facts(&[paid.clone(), opened.clone()]).status(),
            Some(Disputed)
        );
        assert_eq!(
            facts(&[paid.clone(), opened.clone(), won.clone()]).status(),
            Some(Paid)
        );
        assert_eq!(
            facts(&[paid.clone(), opened.clone(), lost]).status(),
            Some(Refunded)
        );
        // Closed before created: the late "created" does not reopen it.
        assert_eq!(facts(&[paid, won, opened]).status(), Some(Paid));
    }

    #[test]
    fn checkout_waits_for_delayed_payments_and_expiry_changes_nothing() {
        let session = |status: &str| json!({"object": "checkout.session", "client_reference_id": "b1", "payment_status": status, "payment_intent": null});
        let unpaid = PaymentEvent::from_stripe("checkout.session.completed", &session("unpaid"));
        assert_eq!(unpaid.booking_id.as_deref(), Some("b1"));
        assert_eq!(
            facts(&[("checkout.session.completed", session("unpaid"))]).status(),
            Some(PaymentPending)
        );
        assert_eq!(
            facts(&[
                ("checkout.session.completed", session("unpaid")),
                ("checkout.session.async_payment_failed", session("unpaid"))
            ])
            .status(),
            Some(PaymentFailed)
        );
        assert_eq!(
            facts(&[("checkout.session.expired", session("unpaid"))]).status(),
            None
        );
        assert!(
            PaymentEvent::from_stripe("checkout.session.expired", &session("unpaid")).is_known()
        );
        assert!(!PaymentEvent::from_stripe("customer.created", &json!({})).is_known());
    }

    #[test]
    fn a_booking_that_moved_on_takes_only_money_going_back() {
        assert!(may_follow(Confirmed, Paid));
        assert!(!may_follow(Completed, Paid));
        assert!(!may_follow(InSession, PaymentFailed));
        assert!(may_follow(Completed, PartiallyRefunded));
        assert!(may_follow(Cancelled, Refunded));
        assert!(
            !may_follow(Refunded, Paid),
            "a backend refund is not undone"
        );
    }
}
