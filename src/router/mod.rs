//! Routing: the SQL classifier (pure, cached by text) that says whether a statement may run on a
//! replica, and what it does to the session.

pub mod cache;
pub mod classify;

pub use cache::ClassifierCache;
pub use classify::{
    classify, Classification, ClassifierConfig, SessionEffect, Statement, StatementKind, Target,
    TxControl,
};
