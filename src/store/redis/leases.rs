//! Leases: what each replica runs, extended while it runs, and taken
//! over when its replica stops extending it; and the key call tokens are
//! signed with, shared by every replica.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::super::TakenOver;
use super::calls::{int, items, script, text, unexpected};
use super::{RedisStore, StoreError, store_error};

static EXTEND: LazyLock<Script> = LazyLock::new(|| script(include_str!("lease_extend.lua")));
static TAKE_OVER: LazyLock<Script> = LazyLock::new(|| script(include_str!("lease_take_over.lua")));

/// Most leases one heartbeat script extends (a replica running more sends
/// several): Lua's stack bounds the arguments of one command.
const EXTEND_BATCH: usize = 1000;

/// Most lapsed leases one take-over script handles: each script is short,
/// so taking over a dead replica's many calls never holds Redis for long.
const TAKE_OVER_BATCH: i64 = 256;

impl RedisStore {
    pub(super) async fn extend_leases(&self, running: Vec<String>) -> Result<(), StoreError> {
        let leases = self.keys.key("leases");
        for ids in running.chunks(EXTEND_BATCH) {
            let _: Value = EXTEND
                .key(&leases)
                .arg(self.keys.prefix())
                .arg(self.claim_timeout_ms())
                .arg(ids)
                .invoke_async(&mut self.connection())
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    pub(super) async fn take_over_lapsed(&self) -> Result<TakenOver, StoreError> {
        let leases = self.keys.key("leases");
        let mut taken = TakenOver::default();
        loop {
            let answer = TAKE_OVER
                .key(&leases)
                .arg(self.keys.prefix())
                .arg(TAKE_OVER_BATCH)
                .invoke_async::<Value>(&mut self.connection())
                .await
                .map_err(store_error)?;
            let [looked_at, pending, functions, maps]: [Value; 4] = items(answer, "take-over")?
                .try_into()
                .map_err(|_| unexpected("take-over"))?;
            let pending = int(&pending).ok_or_else(|| unexpected("take-over"))?;
            self.set_pending(pending);
            let mut functions = items(functions, "take-over")?.into_iter().map(text);
            while let (Some(app), Some(function)) = (functions.next(), functions.next()) {
                let (Some(app), Some(function)) = (app, function) else {
                    return Err(unexpected("take-over"));
                };
                if !taken
                    .functions
                    .iter()
                    .any(|f| f.0 == app && f.1 == function)
                {
                    taken.functions.push((app, function));
                }
            }
            for map in items(maps, "take-over")?.into_iter().map(text) {
                let map = map.ok_or_else(|| unexpected("take-over"))?;
                if !taken.maps.contains(&map) {
                    taken.maps.push(map);
                }
            }
            if int(&looked_at).is_none_or(|n| n < TAKE_OVER_BATCH) {
                return Ok(taken);
            }
        }
    }

    /// Draws the key on the first call of any replica (`SET NX`), and
    /// answers the one stored from then on.
    pub(super) async fn read_shared_secret(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let drawn = crate::invocation::random_hex::<32>();
        let stored: Option<String> = redis::cmd("SET")
            .arg(self.keys.key("secret"))
            .arg(&drawn)
            .arg("NX")
            .arg("GET")
            .query_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        let secret = stored.unwrap_or(drawn);
        from_hex(&secret)
            .filter(|bytes| bytes.len() == 32)
            .map(Some)
            .ok_or_else(|| StoreError::Io("redis: the shared secret is not 32 bytes in hex".into()))
    }
}

/// Bytes from lowercase or uppercase hex; `None` for anything else.
fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let text = text.as_bytes();
    if text.len() % 2 != 0 {
        return None;
    }
    text.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_reads_back_as_its_bytes() {
        assert_eq!(from_hex("00ff7a"), Some(vec![0, 255, 122]));
        assert_eq!(from_hex("0FfA"), Some(vec![15, 250]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
