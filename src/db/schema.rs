//! One schema for both backends: ids are text, times are unix milliseconds.

diesel::table! {
    users (id) {
        id -> Text,
        email -> Nullable<Text>,
        name -> Nullable<Text>,
        role -> Text,
        updated_at -> BigInt,
        erased_at -> Nullable<BigInt>,
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

diesel::joinable!(booking_participants -> bookings (booking_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    bookings,
    booking_participants,
    rooms,
    messages,
    read_cursors,
    booking_status_history,
    notifications,
    stripe_events,
);
