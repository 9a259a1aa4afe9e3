//! mixroom-realtime: live booking chat, booking status, support agent and
//! notifications for Mixroom. See README.md for the layout.

pub mod app;
pub mod auth;
pub mod bookings;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod notifications;
pub mod notify;
pub mod payments;
pub mod retention;
pub mod rooms;
pub mod support;
pub mod telemetry;
pub mod time;
pub mod ws;
