//! Shared fixtures for integration tests.
#![allow(dead_code)]

pub mod fault_proxy;
pub mod gateway;
pub mod nginx;
