//! Bundles over HTTP(S): Range requests, retries with backoff, resumable transfers.
