//! The broker as a confidential OAuth2 client of Forgejo (issue #2; forgejo-facts.md): the
//! login redirect, the code exchange, `/api/v1/user`, and the one token set per Forgejo user,
//! refreshed ahead of expiry, single-flight, persisted before use.
