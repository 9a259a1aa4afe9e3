//! One schema for both backends: ids are text, times are unix milliseconds.

diesel::table! {
    users (id) {
        id -> Text,
        email -> Nullable<Text>,
        name -> Nullable<Text>,
        role -> Text,
        updated_at -> BigInt,
        erased_at -> Nullable<BigInt>,
        sessions_revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    bookings (id) {
        id -> Text,
        client_id -> Text,
        status -> Text,
        title -> Text,
        starts_at -> Nullable<Text>,
        version -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    booking_participants (booking_id, user_id) {
        booking_id -> Text,
        user_id -> Text,
        kind -> Text,
    }
}

diesel::table! {
    rooms (id) {
        id -> Text,
        last_seq -> BigInt,
        created_at -> BigInt,
    }
}

diesel::table! {
    messages (id) {
        id -> Text,
        room -> Text,
        seq -> BigInt,
        sender_id -> Nullable<Text>,
        sender_name -> Text,
        sender_role -> Text,
        client_id -> Nullable<Text>,
        body -> Text,
        sent_at -> BigInt,
        kind -> Text,
        target_seq -> Nullable<BigInt>,
        attachments -> Nullable<Text>,
        edited_at -> Nullable<BigInt>,
        deleted_at -> Nullable<BigInt>,
        reactions -> BigInt,
    }
}

diesel::table! {
    message_reactions (room, seq, user_id, emoji) {
        room -> Text,
        seq -> BigInt,
        user_id -> Text,
        emoji -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    read_cursors (room, user_id) {
        room -> Text,
        user_id -> Text,
        seq -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    booking_status_history (id) {
        id -> Text,
        booking_id -> Text,
        status -> Text,
        previous_status -> Nullable<Text>,
        reason -> Nullable<Text>,
        caused_by -> Text,
        at -> BigInt,
    }
}

diesel::table! {
    notifications (id) {
        id -> Text,
        user_id -> Text,
        kind -> Text,
        title -> Text,
        body -> Text,
        link -> Nullable<Text>,
        source -> Nullable<Text>,
        created_at -> BigInt,
        read_at -> Nullable<BigInt>,
        data -> Nullable<Text>,
        transactional -> Bool,
    }
}

diesel::table! {
    idempotency_keys (key) {
        key -> Text,
        route -> Text,
        request_hash -> Text,
        status -> Integer,
        response -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    booking_payments (id) {
        id -> Text,
        booking_id -> Nullable<Text>,
        payment_intent -> Nullable<Text>,
        charge_id -> Nullable<Text>,
        amount -> Nullable<BigInt>,
        currency -> Nullable<Text>,
        amount_refunded -> BigInt,
        paid -> Bool,
        failed -> Bool,
        pending -> Bool,
        dispute -> Nullable<Text>,
        updated_at -> BigInt,
    }
}

diesel::table! {
    payment_refunds (id) {
        id -> Text,
        charge_id -> Nullable<Text>,
        payment_intent -> Nullable<Text>,
        amount -> BigInt,
        status -> Text,
        updated_at -> BigInt,
    }
}

diesel::table! {
    stripe_events (id) {
        id -> Text,
        event_type -> Text,
        booking_id -> Nullable<Text>,
        outcome -> Text,
        received_at -> BigInt,
    }
}

diesel::table! {
    support_conversations (id) {
        id -> Text,
        user_id -> Text,
        status -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        escalated_at -> Nullable<BigInt>,
        escalation_reason -> Nullable<Text>,
        taken_over_by -> Nullable<Text>,
        taken_over_at -> Nullable<BigInt>,
        answered_seq -> BigInt,
    }
}

diesel::table! {
    support_token_usage (user_id, day) {
        user_id -> Text,
        day -> BigInt,
        tokens -> BigInt,
    }
}

diesel::table! {
    email_preferences (user_id) {
        user_id -> Text,
        chat -> Bool,
        booking -> Bool,
        support -> Bool,
        marketing -> Bool,
        reminder -> Bool,
        chat_delay_secs -> Nullable<BigInt>,
        updated_at -> BigInt,
    }
}

diesel::table! {
    email_items (id) {
        id -> Text,
        user_id -> Text,
        kind -> Text,
        source -> Text,
        room -> Nullable<Text>,
        seq -> Nullable<BigInt>,
        message_id -> Nullable<Text>,
        notification_id -> Nullable<Text>,
        created_at -> BigInt,
        due_at -> BigInt,
        state -> Text,
        outbox_id -> Nullable<Text>,
        updated_at -> BigInt,
        up_to_seq -> Nullable<BigInt>,
        transactional -> Bool,
    }
}

diesel::table! {
    email_outbox (id) {
        id -> Text,
        user_id -> Text,
        to_address -> Text,
        subject -> Text,
        html -> Text,
        text -> Text,
        unsubscribe_url -> Nullable<Text>,
        item_count -> BigInt,
        state -> Text,
        solo -> Bool,
        batch_id -> Nullable<Text>,
        provider_id -> Nullable<Text>,
        last_error -> Nullable<Text>,
        created_at -> BigInt,
        sent_at -> Nullable<BigInt>,
        announcement_id -> Nullable<Text>,
    }
}

diesel::table! {
    email_batches (id) {
        id -> Text,
        state -> Text,
        email_count -> BigInt,
        attempts -> BigInt,
        next_attempt_at -> BigInt,
        claimed_by -> Nullable<Text>,
        claimed_until -> Nullable<BigInt>,
        last_error -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
        bulk -> Bool,
    }
}

diesel::table! {
    booking_reminders (id) {
        id -> Text,
        booking_id -> Text,
        lead_secs -> BigInt,
        starts_at -> BigInt,
        due_at -> BigInt,
        state -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    announcements (id) {
        id -> Text,
        kind -> Text,
        title -> Text,
        body -> Text,
        link -> Nullable<Text>,
        audience_role -> Nullable<Text>,
        request_hash -> Text,
        state -> Text,
        users -> BigInt,
        notified -> BigInt,
        email_queued -> BigInt,
        cursor -> Nullable<Text>,
        claimed_by -> Nullable<Text>,
        claimed_until -> Nullable<BigInt>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    push_subscriptions (endpoint) {
        endpoint -> Text,
        user_id -> Text,
        p256dh -> Text,
        auth -> Text,
        created_at -> BigInt,
        last_success_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    push_preferences (user_id, kind) {
        user_id -> Text,
        kind -> Text,
        enabled -> Bool,
        updated_at -> BigInt,
    }
}

diesel::table! {
    push_queue (id) {
        id -> Text,
        endpoint -> Text,
        user_id -> Text,
        kind -> Text,
        source -> Text,
        payload -> Text,
        state -> Text,
        attempts -> BigInt,
        next_attempt_at -> BigInt,
        claimed_by -> Nullable<Text>,
        claimed_until -> Nullable<BigInt>,
        last_error -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    push_vapid_keys (id) {
        id -> Text,
        private_key -> Text,
        created_at -> BigInt,
    }
}

diesel::joinable!(booking_participants -> bookings (booking_id));

diesel::allow_tables_to_appear_in_same_query!(
    booking_payments,
    payment_refunds,
    users,
    bookings,
    booking_participants,
    rooms,
    messages,
    message_reactions,
    read_cursors,
    booking_status_history,
    notifications,
    stripe_events,
    support_conversations,
    support_token_usage,
    email_preferences,
    email_items,
    email_outbox,
    email_batches,
    idempotency_keys,
    booking_reminders,
    announcements,
    push_subscriptions,
    push_preferences,
    push_queue,
    push_vapid_keys,
);
