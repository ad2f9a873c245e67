//! Partition keys: which shard each record goes to (Kinesis hashes the key
//! with MD5 to pick one). See `PartitionKeyMode`.

use std::sync::Arc;

use crate::rng::Rng;

/// How each record's partition key is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionKeyMode {
    /// One random key per execution environment: ordered per environment,
    /// environments spread over shards.
    Environment,
    /// The request id of the invocation the event belongs to.
    Request,
    /// A fresh random key per record: the most even spread, no ordering.
    Random,
}

pub struct Keys {
    mode: PartitionKeyMode,
    environment: Arc<str>,
    rng: Rng,
    /// The last request key made, reused while events name the same request.
    last_request: Option<Arc<str>>,
}

impl Keys {
    /// `environment`: this execution environment's random key.
    pub fn new(mode: PartitionKeyMode, environment: &str, rng: Rng) -> Keys {
        Keys {
            mode,
            environment: Arc::from(environment),
            rng,
            last_request: None,
        }
    }

    /// This execution environment's key.
    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// The key for an event: `event_request` is the request id the event
    /// names itself (platform events), `current` the invocation in progress.
    pub fn key(&mut self, event_request: Option<&str>, current: Option<&str>) -> Arc<str> {
        match self.mode {
            PartitionKeyMode::Environment => self.environment.clone(),
            PartitionKeyMode::Request => match event_request.or(current) {
                // Kinesis allows 1-256 characters.
                Some(id) if !id.is_empty() && id.len() <= 256 => match &self.last_request {
                    Some(k) if **k == *id => k.clone(),
                    _ => self.last_request.insert(Arc::from(id)).clone(),
                },
                _ => self.environment.clone(),
            },
            PartitionKeyMode::Random => Arc::from(self.rng.hex(16)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        let mut k = Keys::new(
            PartitionKeyMode::Environment,
            &Rng::seeded(2).hex(16),
            Rng::seeded(1),
        );
        let env = k.environment().to_string();
        assert_eq!(env.len(), 32);
        assert_eq!(&*k.key(Some("r"), Some("c")), env);

        let mut k = Keys::new(PartitionKeyMode::Request, "env", Rng::seeded(1));
        assert_eq!(&*k.key(Some("r"), Some("c")), "r");
        assert_eq!(&*k.key(None, Some("c")), "c");
        assert_eq!(&*k.key(None, None), k.environment());
        let long = "x".repeat(300);
        assert_eq!(&*k.key(Some(&long), None), k.environment());

        let mut k = Keys::new(PartitionKeyMode::Random, "env", Rng::seeded(1));
        assert_ne!(k.key(None, None), k.key(None, None));
    }
}
