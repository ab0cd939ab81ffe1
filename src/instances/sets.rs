//! A class's instance sets: one pool per distinct set of parameter values
//! (`?size=large`), whose instances see them as `FNGATE_PARAM_<NAME>`; at
//! most `max_parameter_sets` alive, the least recently used one stopped
//! to make room. A function, or a class without parameters, has one set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Instances, Pool, Protocol};
use crate::config::PoolSpec;

pub struct ParameterSets {
    label: String,
    spec: PoolSpec,
    protocol: Protocol,
    /// Parameter names, in the class's order.
    names: Vec<String>,
    max_sets: usize,
    instances: Arc<Instances>,
    sets: Mutex<HashMap<Vec<String>, Arc<Pool>>>,
}

impl ParameterSets {
    pub fn new(
        label: String,
        spec: PoolSpec,
        protocol: Protocol,
        names: Vec<String>,
        max_sets: usize,
        instances: &Arc<Instances>,
    ) -> Arc<ParameterSets> {
        let sets = Arc::new(ParameterSets {
            label,
            spec,
            protocol,
            names,
            max_sets: max_sets.max(1),
            instances: instances.clone(),
            sets: Mutex::new(HashMap::new()),
        });
        if sets.names.is_empty() {
            // The one set exists from the start, so min_instances are warm.
            sets.pool(Vec::new());
        }
        sets
    }

    /// The parameter names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The pool for these parameter values (one per name, in order),
    /// started if needed; the least recently used set stops to make room.
    pub fn pool(&self, values: Vec<String>) -> Arc<Pool> {
        let mut sets = self.sets.lock().expect("no code panics holding this lock");
        if let Some(pool) = sets.get(&values).filter(|pool| !pool.is_closed()) {
            return pool.clone();
        }
        sets.retain(|_, pool| !pool.is_closed());
        while sets.len() >= self.max_sets {
            let oldest = sets
                .iter()
                .min_by_key(|(_, pool)| pool.last_used())
                .map(|(key, _)| key.clone());
            let Some(oldest) = oldest else { break };
            if let Some(pool) = sets.remove(&oldest) {
                tracing::info!(pool = %pool.label, "stopping the least recently used parameter set");
                pool.close();
            }
        }
        let env = self
            .names
            .iter()
            .zip(&values)
            .map(|(name, value)| {
                (
                    format!("FNGATE_PARAM_{}", name.to_ascii_uppercase()),
                    value.clone(),
                )
            })
            .collect();
        let label = if self.names.is_empty() {
            self.label.clone()
        } else {
            let pairs: Vec<String> = self
                .names
                .iter()
                .zip(&values)
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            format!("{}?{}", self.label, pairs.join("&"))
        };
        let pool = Pool::new(
            label,
            self.spec.clone(),
            self.protocol.clone(),
            env,
            &self.instances,
        );
        if self.instances.handle.get().is_some() {
            pool.maintain();
        }
        sets.insert(values, pool.clone());
        pool
    }

    /// The pools alive now (for tests and the log).
    pub fn live(&self) -> usize {
        let sets = self.sets.lock().expect("no code panics holding this lock");
        sets.values().filter(|pool| !pool.is_closed()).count()
    }
}

impl Drop for ParameterSets {
    /// What no function uses any more (a reload or a deploy replaced it,
    /// and its last call has ended) stops its instances.
    fn drop(&mut self) {
        let sets = self.sets.get_mut().unwrap_or_else(|e| e.into_inner());
        for pool in sets.values() {
            pool.close();
        }
    }
}
