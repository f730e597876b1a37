//! Shared fixtures for integration tests.
#![allow(dead_code)]

pub mod bitbake;
pub mod fault_proxy;
pub mod fixture;
pub mod gateway;
pub mod hawkbit_sim;
pub mod nginx;
pub mod procs;
pub mod py_http;
pub mod tarcraft;
