//! The Closer service: gRPC transport, the answer path (coverage, generation, fact guard), and
//! the tools behind the `closer` command.

pub mod answer;
pub mod attacks;
pub mod auth;
pub mod bench;
pub mod chat;
pub mod config;
pub mod coverage;
pub mod error;
pub mod guard;
pub mod kbbench;
pub mod load;
pub mod meetings;
pub mod playbook;
pub mod reports;
pub mod sales;
pub mod sales_service;
pub mod sched;
pub mod server;
pub mod service;
pub mod slots;
pub mod state;
pub mod web;
