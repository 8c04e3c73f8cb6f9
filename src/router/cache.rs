//! TEMPORARY stand-in for the classification cache.
use super::classify::{classify, Classification, ClassifierConfig};
use std::sync::Arc;
/// Stand-in cache (no caching).
pub struct ClassifierCache;
impl ClassifierCache {
    pub fn new(_capacity: usize) -> Self {
        ClassifierCache
    }
    pub fn classify(&self, sql: &str, cfg: &ClassifierConfig) -> Arc<Classification> {
        Arc::new(classify(sql, cfg))
    }
}
