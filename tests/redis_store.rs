//! The Redis call store against a real redis-server, through the
//! `CallStore` trait the gateway uses: calls and leases, maps, deploys
//! and webhook deliveries, each in a file of its own.

mod common;

#[path = "redis_store/calls.rs"]
mod calls;
#[path = "redis_store/deploys.rs"]
mod deploys;
#[path = "redis_store/maps.rs"]
mod maps;

use std::sync::Arc;
use std::time::Duration;

use common::redis::RedisServer;
use fngate::store::redis::{RedisSettings, RedisStore};

/// A store on `server` under a prefix of its own, so that tests sharing a
/// server never meet.
pub async fn store_on(server: &RedisServer, claim_timeout: Duration) -> Arc<RedisStore> {
    let prefix = format!("t{}:", fngate::invocation::random_hex::<6>());
    RedisStore::open(&RedisSettings {
        url: server.url(),
        prefix,
        claim_timeout,
    })
    .await
    .expect("the store opens on a running redis-server")
}
