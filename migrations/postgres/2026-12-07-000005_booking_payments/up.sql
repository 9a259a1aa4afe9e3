-- What Stripe's events said about each booking's payment (src/payments.rs):
-- later events that name only a charge or a payment intent (refunds,
-- disputes) find their booking here. A row whose booking is not known yet
-- (a refund reported before the success) is merged into the booking's row
-- when an event names both.
CREATE TABLE booking_payments (
    id TEXT PRIMARY KEY NOT NULL,
    booking_id TEXT,
    payment_intent TEXT,
    charge_id TEXT,
    amount BIGINT,
    currency TEXT,
    amount_refunded BIGINT NOT NULL DEFAULT 0,
    paid BOOLEAN NOT NULL DEFAULT FALSE,
    failed BOOLEAN NOT NULL DEFAULT FALSE,
    pending BOOLEAN NOT NULL DEFAULT FALSE,
    dispute TEXT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX booking_payments_booking ON booking_payments (booking_id);
CREATE INDEX booking_payments_intent ON booking_payments (payment_intent);
CREATE INDEX booking_payments_charge ON booking_payments (charge_id);
-- Refunds told one by one (`refund.created`, `refund.updated`,
-- `charge.refund.updated`): each counted once, by its id, however often it
-- is reported.
CREATE TABLE payment_refunds (
    id TEXT PRIMARY KEY NOT NULL,
    charge_id TEXT,
    payment_intent TEXT,
    amount BIGINT NOT NULL,
    status TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX payment_refunds_charge ON payment_refunds (charge_id);
CREATE INDEX payment_refunds_intent ON payment_refunds (payment_intent);
