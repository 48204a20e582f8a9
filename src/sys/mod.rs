//! Device and namespace plumbing: the only module of the root package with
//! `unsafe` code (ioctls on `/dev/net/tun`, `setns`/`unshare`, SCM_RIGHTS).
//! Every unsafe block carries a `// SAFETY:` comment.
