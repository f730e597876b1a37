//! The install pipeline.
