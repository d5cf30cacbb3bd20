// @generated automatically by Diesel CLI.

diesel::table! {
    contact_links (phone) {
        phone -> Text,
        contact -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    dead_letters (phone, id) {
        id -> Int8,
        phone -> Text,
        source -> Text,
        source_id -> Int8,
        payload -> Jsonb,
        reason -> Text,
        created_at -> Timestamptz,
        replayed_at -> Nullable<Timestamptz>,
        dedupe_key -> Nullable<Text>,
    }
}

diesel::table! {
    inbox (phone, id) {
        id -> Int8,
        phone -> Text,
        provider_message_id -> Text,
        payload -> Jsonb,
        received_at -> Timestamptz,
        delivery_count -> Int4,
        last_delivery_at -> Timestamptz,
        processed_at -> Nullable<Timestamptz>,
        attempts -> Int4,
        last_error -> Nullable<Text>,
        contact_name -> Nullable<Text>,
        leased_by -> Int8,
        lease_until -> Timestamptz,
        contact_username -> Nullable<Text>,
        version -> Nullable<Int8>,
        traceparent -> Nullable<Text>,
    }
}

diesel::table! {
    media (phone, media_id) {
        phone -> Text,
        media_id -> Text,
        provider_message_id -> Text,
        kind -> Text,
        mime_type -> Nullable<Text>,
        sha256 -> Nullable<Text>,
        caption -> Nullable<Text>,
        status -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        path -> Nullable<Text>,
        bytes -> Nullable<Int8>,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    messages (phone, id) {
        id -> Int8,
        phone -> Text,
        direction -> Text,
        origin -> Text,
        body -> Text,
        inbox_id -> Nullable<Int8>,
        provider_message_id -> Nullable<Text>,
        status -> Text,
        error -> Nullable<Text>,
        outbox_key -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        author -> Nullable<Text>,
    }
}

diesel::table! {
    erasures (phone) {
        phone -> Text,
        erased_at -> Timestamptz,
        requested_by -> Nullable<Text>,
        counts -> Jsonb,
    }
}

diesel::table! {
    events (phone, id) {
        id -> Int8,
        phone -> Text,
        kind -> Text,
        event_key -> Text,
        payload -> Jsonb,
        release -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    outbox (phone, id) {
        id -> Int8,
        phone -> Text,
        kind -> Text,
        payload -> Jsonb,
        idempotency_key -> Text,
        status -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        provider_message_id -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        traceparent -> Nullable<Text>,
    }
}

diesel::table! {
    outcomes (phone, id) {
        id -> Int8,
        phone -> Text,
        kind -> Text,
        ticket -> Text,
        data -> Jsonb,
        inbox_id -> Nullable<Int8>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    send_budget (number, second) {
        number -> Text,
        second -> Int8,
        used -> Int4,
        last_grant -> Int4,
    }
}

diesel::table! {
    sessions (phone) {
        phone -> Text,
        flow_state -> Text,
        data -> Jsonb,
        version -> Int8,
        handoff -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        last_customer_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    template_status (name, language) {
        name -> Text,
        language -> Text,
        status -> Text,
        reason -> Nullable<Text>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    timers (phone, id) {
        phone -> Text,
        id -> Int8,
        kind -> Text,
        due_at -> Timestamptz,
        action -> Jsonb,
        status -> Text,
        set_version -> Int8,
        fired_version -> Nullable<Int8>,
        fired_at -> Nullable<Timestamptz>,
        outcome -> Nullable<Text>,
        leased_by -> Int8,
        lease_until -> Timestamptz,
        created_at -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    contact_links,
    dead_letters,
    erasures,
    events,
    inbox,
    media,
    messages,
    outbox,
    outcomes,
    send_budget,
    sessions,
    template_status,
    timers,
);
