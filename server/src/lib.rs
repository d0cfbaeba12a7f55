//! The Closer gRPC server: thin handlers over `closer-sales` (one file per service under
//! [`grpc`]), API keys ([`auth`]), the leaderboard page ([`web`]), `/metrics` ([`metrics`]),
//! reports, start-up and shutdown ([`server`]).

// A function over 100 lines is a sign it does several things: split it (issue 27).
#![warn(clippy::too_many_lines)]

pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod grpc;
pub mod grpc_web;
pub mod metrics;
pub mod reports;
pub mod server;
pub mod web;
