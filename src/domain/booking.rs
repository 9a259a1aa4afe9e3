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
}

impl serde::Serialize for BookingStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}
