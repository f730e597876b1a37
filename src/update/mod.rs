//! Update discovery.
