//! The daemon: HTTP/JSON API over a Unix socket (Docker Engine API shapes),
//! state, and the link to the dataplane and sandboxes.
