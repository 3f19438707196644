//! The providers added after Strava and Polar, each told through the same stories
//! (`stories.rs`): connect → Endpoint, declined, refresh and a dead grant, disconnect with the
//! revocation seen upstream, webhooks (handshake, good / bad / replayed signatures, dedupe), and
//! data backfilled and webhook-driven, valid R4 — on SQLite and PostgreSQL. One test binary for
//! all of them (one link, one harness); a provider's module holds its stand-in, its `Case` and
//! the stories only it has.

#[path = "../support/mod.rs"]
mod support;

mod dexcom;
mod garmin;
mod google;
mod oura;
mod stories;
mod whoop;
mod withings;
