//! Helpers shared by integration tests. Include with `mod support;`; each test crate uses only
//! part of this, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod api_server;
pub mod binary;
pub mod smtp;
