//! Building and signing bundles (`rota bundle create`).
