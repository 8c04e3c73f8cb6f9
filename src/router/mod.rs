//! Routing: the SQL classifier (a real lexer, pure, cached by text) that says whether a statement
//! may run on a replica, and what it does to the transaction and the session.

pub mod cache;
pub mod classify;
mod cursor;
mod functions;
mod keywords;
mod lexer;
mod marks;
pub use marks::search_path_shadows;
mod plain;
#[cfg(test)]
mod purity_tests;
mod query;
mod session;
#[cfg(test)]
mod tests;

pub use cache::ClassifierCache;
pub use classify::{
    classify, reasons, Classification, ClassifierConfig, SessionEffect, Statement, StatementKind, Target, TxControl,
};
pub use functions::LASTING_PINS;
pub use plain::{plain_class, plain_class_of, plain_sample, plain_statement};
pub use session::{is_reserved_name, RESERVED_PREFIX};
