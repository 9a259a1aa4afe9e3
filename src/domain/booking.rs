//! Booking statuses (`docs/payments.md` says which payment events lead to
//! which).

text_enum! {
    /// Where a booking stands.
    pub enum BookingStatus {
        Requested = "requested",
        Confirmed = "confirmed",
        PaymentPending = "payment_pending",
        Paid = "paid",
        PaymentFailed = "payment_failed",
        InSession = "in_session",
        Completed = "completed",
        Cancelled = "cancelled",
        PartiallyRefunded = "partially_refunded",
        Refunded = "refunded",
        Disputed = "disputed",
    }
}

impl BookingStatus {
    /// The status in words ("payment pending").
    pub fn words(self) -> String {
        self.as_str().replace('_', " ")
    }

    /// Whether its session is still to happen as agreed, so its
    /// participants are reminded of it: not while only requested, nor once
    /// cancelled, refunded, under way or over.
    pub fn awaits_session(self) -> bool {
        matches!(
            self,
            BookingStatus::Confirmed
                | BookingStatus::PaymentPending
                | BookingStatus::Paid
                | BookingStatus::PaymentFailed
                | BookingStatus::PartiallyRefunded
                | BookingStatus::Disputed
        )
    }
}
