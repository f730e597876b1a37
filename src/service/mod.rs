//! The D-Bus face of rota.
