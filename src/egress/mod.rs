//! The per-session credential-injecting proxy towards Forgejo (ARCHITECTURE.md §2, "Giving the
//! child its credentials", `inject` mode): the child holds only a placeholder; the broker
//! checks it, enforces the upstream API policy from `policies/`, injects the user's current
//! token, forwards, and audits the call.
