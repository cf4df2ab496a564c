//! The guest is hostile: each test here plays the attacker for real, from a
//! guest kernel or a `--privileged` container inside one, and checks what the
//! host's administrator would check afterwards: host files unchanged, memory
//! and logs within their bounds, other containers unaffected, nothing left
//! behind. docs/security.md maps every defence to its test.
//!
//! One module per channel to the host; each runs inside the test host
//! (`integration/run-suite hostile_guest`, part of `make test`).
mod annotations;
mod bridge;
mod deadlines;
mod flood;
mod readonly;
mod share;
