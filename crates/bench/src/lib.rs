//! `make bench` and `make soak` drivers (see `src/main.rs` and [`soak`]).

pub mod soak;
