//! Shared fixtures for integration tests.
#![allow(dead_code)]

pub mod gateway;
pub mod nginx;
